//! `weir`: the CNI plugin binary. `main` reads the invocation, dispatches on
//! CNI_COMMAND, writes the protocol's JSON to stdout (and nothing else) and
//! one line to the log file.

mod add;
mod check;
mod common;
mod config;
mod del;
mod error;
mod gc;
mod log;
mod names;
mod netlink;
mod netns;
mod result;
mod status;

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
    time::Instant,
};

use serde_json::{Value, json};

use crate::{
    config::{Command, Env, LogLevel, NetConf, RawInvocation, SUPPORTED_VERSIONS},
    error::{CniError, Error, Result},
};

/// What the log line says about the invocation, filled in as it is learned.
#[derive(Default)]
struct Facts {
    verb: Option<Command>,
    container_id: Option<String>,
    ifname: Option<String>,
    network: Option<String>,
    log_file: Option<PathBuf>,
    log_level: Option<LogLevel>,
}

fn main() -> ExitCode {
    let started = Instant::now();
    log::start();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let raw = RawInvocation::from_process(stdin);
    let mut facts = Facts::default();
    let outcome = dispatch(&raw, &mut facts);

    let mut stdout = std::io::stdout().lock();
    let (code, msg) = match &outcome {
        Ok(out) => {
            if let Some(v) = out {
                let _ = writeln!(stdout, "{v}");
            }
            (None, None)
        }
        Err(e) => {
            let err = CniError::new(raw.reply_version(), e);
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string(&err).unwrap_or_default()
            );
            (Some(err.code), Some(err.msg))
        }
    };
    let _ = stdout.flush();

    let log_file = facts
        .log_file
        .clone()
        .or_else(|| raw.log_file_hint())
        .or_else(|| std::env::var_os("WEIR_LOG_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::defaults::LOG_FILE));
    let verb = facts.verb.map_or("?", Command::as_str);
    log::write(
        &log_file,
        facts.log_level.unwrap_or(LogLevel::Info),
        &log::Line {
            ts: log::now(),
            verb,
            container_id: facts.container_id.as_deref(),
            ifname: facts.ifname.as_deref(),
            network: facts.network.as_deref(),
            duration_us: started.elapsed().as_micros(),
            outcome: if outcome.is_ok() { "ok" } else { "error" },
            code,
            msg: msg.as_deref(),
            steps: if facts.log_level == Some(LogLevel::Debug) {
                log::take_steps()
            } else {
                Vec::new()
            },
        },
    );
    if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn dispatch(raw: &RawInvocation, facts: &mut Facts) -> Result<Option<Value>> {
    let command = raw.command()?;
    facts.verb = Some(command);
    if command == Command::Version {
        return Ok(Some(version_reply()));
    }
    // The attachment's environment first: a bad one is reported as such even
    // when stdin is bad too.
    let env = match command {
        Command::Add | Command::Del | Command::Check => {
            let env = Env::from_raw(raw, command)?;
            facts.container_id = Some(env.container_id.clone());
            facts.ifname = Some(env.ifname.clone());
            Some(env)
        }
        _ => None,
    };
    let conf = NetConf::parse(&raw.stdin, command)?;
    facts.network = Some(conf.name.clone());
    facts.log_file = Some(conf.log_file.clone());
    facts.log_level = Some(conf.log_level);
    let need_env = || {
        env.as_ref()
            .ok_or_else(|| Error::Internal("no environment".into()))
    };
    match command {
        Command::Add => add::run(need_env()?, &conf).map(Some),
        Command::Del => del::run(need_env()?, &conf).map(|()| None),
        Command::Check => check::run(need_env()?, &conf).map(|()| None),
        Command::Status => status::run(&conf).map(|()| None),
        Command::Gc => gc::run(&conf).map(|()| None),
        Command::Version => Ok(Some(version_reply())),
    }
}

fn version_reply() -> Value {
    json!({
        "cniVersion": config::LATEST,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}
