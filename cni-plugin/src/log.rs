//! One structured line per invocation in the log file (stdout belongs to the
//! protocol). The file is capped: past [`MAX_BYTES`] it is renamed to
//! `<file>.1` (replacing the previous one) and a new one is started.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::config::LogLevel;

pub const MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line<'a> {
    /// Seconds since the epoch.
    pub ts: f64,
    pub verb: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<&'a str>,
    pub duration_us: u128,
    /// `ok` or `error`.
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg: Option<&'a str>,
    /// Step timings (logLevel debug).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<(&'static str, u128)>,
}

/// Step timings of this invocation: (step, microseconds since the previous
/// mark). Logged at logLevel debug.
static STEPS: Mutex<Steps> = Mutex::new(Steps {
    last: None,
    marks: Vec::new(),
});

struct Steps {
    last: Option<Instant>,
    marks: Vec<(&'static str, u128)>,
}

/// Marks the end of `step`.
pub fn mark(step: &'static str) {
    if let Ok(mut s) = STEPS.lock() {
        let now = Instant::now();
        let since = s.last.map_or(0, |t| now.duration_since(t).as_micros());
        s.last = Some(now);
        s.marks.push((step, since));
    }
}

/// Starts the step clock.
pub fn start() {
    if let Ok(mut s) = STEPS.lock() {
        s.last = Some(Instant::now());
    }
}

pub fn take_steps() -> Vec<(&'static str, u128)> {
    STEPS
        .lock()
        .map(|mut s| std::mem::take(&mut s.marks))
        .unwrap_or_default()
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Appends `line` to `path` when `level` allows. Failing to log never fails
/// the invocation.
pub fn write(path: &Path, level: LogLevel, line: &Line<'_>) {
    let wanted = match level {
        LogLevel::Off => false,
        LogLevel::Error => line.outcome != "ok",
        LogLevel::Info | LogLevel::Debug => true,
    };
    if !wanted {
        return;
    }
    let Ok(mut text) = serde_json::to_string(line) else {
        return;
    };
    text.push('\n');
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    if fs::metadata(path).is_ok_and(|m| m.len() > MAX_BYTES) {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let _ = fs::rename(path, rotated);
    }
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        // One write of one line: appends from concurrent invocations do not
        // interleave.
        let _ = f.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(outcome: &str) -> Line<'_> {
        Line {
            ts: now(),
            verb: "ADD",
            container_id: Some("c"),
            ifname: Some("eth0"),
            network: Some("n"),
            duration_us: 1,
            outcome,
            code: None,
            msg: None,
            steps: Vec::new(),
        }
    }

    #[test]
    fn lines_are_json_levels_filter_and_the_file_rotates() {
        let dir = std::env::temp_dir().join(format!("weir-log-test-{}", std::process::id()));
        let path = dir.join("cni.log");
        write(&path, LogLevel::Info, &line("ok"));
        write(&path, LogLevel::Error, &line("ok"));
        write(&path, LogLevel::Off, &line("error"));
        write(&path, LogLevel::Error, &line("error"));
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[1]["outcome"], "error");

        fs::write(&path, vec![b'x'; MAX_BYTES as usize + 1]).unwrap();
        write(&path, LogLevel::Info, &line("ok"));
        let rotated = dir.join("cni.log.1");
        assert_eq!(fs::metadata(&rotated).unwrap().len(), MAX_BYTES + 1);
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
