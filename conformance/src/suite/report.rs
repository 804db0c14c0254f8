//! Presenting a run: the summary table, JUnit XML, markdown, JSON, the side
//! by side table of several runs, and the comparison with an expectation
//! file.
//!
//! An expectation file is JSON:
//!
//! ```json
//! {
//!   "plugin": "ptp + host-local, Debian containernetworking-plugins 1.1.1",
//!   "expect": {
//!     "*@1.1.0": { "outcome": "not-applicable", "why": "claims up to 1.0.0" },
//!     "input.garbage-stdin": { "outcome": "fail", "why": "..." }
//!   }
//! }
//! ```
//!
//! Keys are case ids or patterns with `*` (any run of characters); the
//! longest matching key wins; a case no key matches is expected to pass. A
//! key that matches no case is itself a mismatch, so a stale file is noticed.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{CaseResult, Outcome, Report, runtime::clip};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Expected {
    pub outcome: Outcome,
    /// Why the plugin deviates.
    #[serde(default)]
    pub why: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Expectations {
    #[serde(default)]
    pub plugin: String,
    #[serde(default)]
    pub expect: BTreeMap<String, Expected>,
}

impl Expectations {
    pub fn load(path: &Path) -> Result<Expectations> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// The expectation for case `id` and the key that gave it.
    pub fn for_case(&self, id: &str) -> (Outcome, Option<&str>) {
        self.expect
            .iter()
            .filter(|(k, _)| glob(k, id))
            .max_by_key(|(k, _)| (k.len(), !k.contains('*')))
            .map_or((Outcome::Pass, None), |(k, e)| {
                (e.outcome, Some(k.as_str()))
            })
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || !s[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// One case whose outcome is not the expected one.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub id: String,
    pub expected: Option<Outcome>,
    pub got: Option<Outcome>,
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |o: Option<Outcome>| o.map_or("-".to_owned(), |o| o.to_string());
        write!(
            f,
            "{}: expected {}, got {}: {}",
            self.id,
            show(self.expected),
            show(self.got),
            self.message
        )
    }
}

/// Compares `report` with `exp` (every case passes when `exp` is empty).
pub fn compare(report: &Report, exp: &Expectations) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for c in &report.cases {
        let (want, _) = exp.for_case(&c.id);
        if want != c.outcome {
            out.push(Mismatch {
                id: c.id.clone(),
                expected: Some(want),
                got: Some(c.outcome),
                message: c.message.clone(),
            });
        }
    }
    for k in exp.expect.keys() {
        if !report.cases.iter().any(|c| glob(k, &c.id)) {
            out.push(Mismatch {
                id: k.clone(),
                expected: Some(exp.expect[k].outcome),
                got: None,
                message: "the expectation matches no case of the run".into(),
            });
        }
    }
    out
}

/// The table printed to stdout.
pub fn summary(report: &Report, exp: &Expectations) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cni-conformance: {} (network {}), versions under test {}, claimed {}",
        report.plugin,
        report.network,
        report.versions.join(","),
        if report.claimed.is_empty() {
            "none".to_owned()
        } else {
            report.claimed.join(",")
        }
    );
    let _ = writeln!(
        s,
        "{:<34} {:<6} {:<14} {:<14} message",
        "case", "level", "outcome", "expected"
    );
    for c in &report.cases {
        let (want, _) = exp.for_case(&c.id);
        let mark = if want == c.outcome { " " } else { "!" };
        let _ = writeln!(
            s,
            "{:<34} {:<6} {:<14} {:<13}{mark} {}",
            c.id,
            c.level.to_string(),
            c.outcome.to_string(),
            want.to_string(),
            clip(&c.message, 110)
        );
    }
    let count = |o: Outcome| report.cases.iter().filter(|c| c.outcome == o).count();
    let mismatches = compare(report, exp);
    let _ = writeln!(
        s,
        "{} cases: {} pass, {} fail, {} not applicable; {} differ from the expectation; {:.1}s",
        report.cases.len(),
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::NotApplicable),
        mismatches.len(),
        report.millis as f64 / 1000.0
    );
    for m in &mismatches {
        let _ = writeln!(s, "  MISMATCH {m}");
    }
    s
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The markdown report of one run.
pub fn markdown(report: &Report, exp: &Expectations) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# cni-conformance: {}\n", report.plugin);
    let _ = writeln!(
        s,
        "Network `{}`; versions under test {}; claimed {}; {:.1}s.\n",
        report.network,
        report.versions.join(", "),
        if report.claimed.is_empty() {
            "none".to_owned()
        } else {
            report.claimed.join(", ")
        },
        report.millis as f64 / 1000.0
    );
    let _ = writeln!(s, "| case | level | spec | outcome | expected | message |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
    for c in &report.cases {
        let (want, _) = exp.for_case(&c.id);
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} |",
            c.id,
            c.level,
            md_cell(&c.spec),
            c.outcome,
            want,
            md_cell(&clip(&c.message, 300))
        );
    }
    let mismatches = compare(report, exp);
    if !mismatches.is_empty() {
        let _ = writeln!(s, "\n## Differences from the expectation\n");
        for m in &mismatches {
            let _ = writeln!(s, "- {}", md_cell(&m.to_string()));
        }
    }
    s
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// JUnit XML: a test case per case; a difference from the expectation is a
/// failure, a not-applicable case is skipped.
pub fn junit(report: &Report, exp: &Expectations) -> String {
    let mismatches = compare(report, exp);
    let skipped = report
        .cases
        .iter()
        .filter(|c| c.outcome == Outcome::NotApplicable)
        .count();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuite name=\"cni-conformance.{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
        xml(&report.plugin),
        report.cases.len(),
        mismatches.len(),
        skipped,
        report.millis as f64 / 1000.0
    );
    for c in &report.cases {
        let (want, key) = exp.for_case(&c.id);
        let _ = write!(
            s,
            "  <testcase classname=\"cni-conformance.{}\" name=\"{}\" time=\"{:.3}\">",
            xml(&report.plugin),
            xml(&c.id),
            c.millis as f64 / 1000.0
        );
        if want != c.outcome {
            let _ = write!(
                s,
                "<failure message=\"expected {want}, got {}\">{}</failure>",
                c.outcome,
                xml(&c.message)
            );
        } else if c.outcome == Outcome::NotApplicable {
            let _ = write!(s, "<skipped message=\"{}\"/>", xml(&c.message));
        }
        let note = match key {
            Some(k) => format!(" (expected by {k})"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "<system-out>{} {}: {}{}</system-out></testcase>",
            c.level,
            c.outcome,
            xml(&c.message),
            xml(&note)
        );
    }
    for m in mismatches.iter().filter(|m| m.got.is_none()) {
        let _ = writeln!(
            s,
            "  <testcase classname=\"cni-conformance.{}\" name=\"expect {}\"><failure message=\"{}\"/></testcase>",
            xml(&report.plugin),
            xml(&m.id),
            xml(&m.message)
        );
    }
    s.push_str("</testsuite>\n");
    s
}

/// Writes the report to `path`, in the format its extension names (`.xml`
/// JUnit, `.md` markdown, `.json` the report itself).
pub fn write(path: &Path, report: &Report, exp: &Expectations) -> Result<()> {
    let body = match path.extension().and_then(|e| e.to_str()) {
        Some("xml") => junit(report, exp),
        Some("md") => markdown(report, exp),
        Some("json") => serde_json::to_string_pretty(report)? + "\n",
        _ => bail!(
            "{}: the report's extension must be .xml, .md or .json",
            path.display()
        ),
    };
    std::fs::write(path, body).with_context(|| format!("write {}", path.display()))
}

fn short(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Fail => "**fail**",
        Outcome::NotApplicable => "n/a",
    }
}

/// Several runs side by side: one row per case, one column per run.
pub fn side_by_side(runs: &[(String, Report)]) -> String {
    let mut ids: Vec<(String, String)> = Vec::new();
    for (_, r) in runs {
        for c in &r.cases {
            if !ids.iter().any(|(i, _)| *i == c.id) {
                ids.push((c.id.clone(), c.level.to_string()));
            }
        }
    }
    let mut s = String::new();
    let _ = write!(s, "| case | level |");
    for (name, _) in runs {
        let _ = write!(s, " {} |", md_cell(name));
    }
    let _ = write!(s, "\n| --- | --- |");
    for _ in runs {
        s.push_str(" --- |");
    }
    s.push('\n');
    for (id, level) in &ids {
        let _ = write!(s, "| `{id}` | {level} |");
        for (_, r) in runs {
            let cell = r.case(id).map_or("—", |c: &CaseResult| short(c.outcome));
            let _ = write!(s, " {cell} |");
        }
        s.push('\n');
    }
    let _ = write!(s, "| **pass / fail / n/a** | |");
    for (_, r) in runs {
        let n = |o: Outcome| r.cases.iter().filter(|c| c.outcome == o).count();
        let _ = write!(
            s,
            " {} / {} / {} |",
            n(Outcome::Pass),
            n(Outcome::Fail),
            n(Outcome::NotApplicable)
        );
    }
    s.push('\n');
    s
}

/// The cases the suite has, as a markdown table (`--list-cases`).
pub fn case_table() -> String {
    use super::cases::{AT_NEWEST, GLOBAL, PER_VERSION, V1_1};
    let mut s =
        String::from("| case | level | runs | checks | spec |\n| --- | --- | --- | --- | --- |\n");
    let groups: [(&[super::cases::Def], &str); 4] = [
        (GLOBAL, "once"),
        (PER_VERSION, "per version"),
        (AT_NEWEST, "once, at the newest claimed version"),
        (V1_1, "at 1.1.0"),
    ];
    for (defs, runs) in groups {
        for d in defs {
            let runs = if runs == "per version" && d.since != "0.3.0" {
                format!("per version, from {}", d.since)
            } else {
                runs.to_owned()
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {runs} | {} | {} |",
                d.name,
                d.level,
                md_cell(d.what),
                md_cell(d.spec)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Level;

    fn case(id: &str, outcome: Outcome) -> CaseResult {
        CaseResult {
            id: id.into(),
            level: Level::Must,
            spec: "§2".into(),
            outcome,
            message: "m <&>".into(),
            millis: 1,
        }
    }

    fn report() -> Report {
        Report {
            plugin: "ptp".into(),
            network: "n".into(),
            claimed: vec!["1.0.0".into()],
            versions: vec!["1.0.0".into(), "1.1.0".into()],
            cases: vec![
                case("add.result@1.0.0", Outcome::Pass),
                case("add.result@1.1.0", Outcome::NotApplicable),
                case("status.ready@1.1.0", Outcome::NotApplicable),
                case("input.garbage-stdin", Outcome::Fail),
            ],
            millis: 10,
            prefix: "cc-0-".into(),
        }
    }

    fn exp(pairs: &[(&str, Outcome)]) -> Expectations {
        Expectations {
            plugin: String::new(),
            expect: pairs
                .iter()
                .map(|(k, o)| {
                    (
                        (*k).to_owned(),
                        Expected {
                            outcome: *o,
                            why: String::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*@1.1.0", "gc.releases-stale@1.1.0"));
        assert!(glob("del.*@0.4.0", "del.second@0.4.0"));
        assert!(!glob("del.*@0.4.0", "del.second@1.0.0"));
        assert!(glob("a", "a") && !glob("a", "ab"));
        assert!(glob("*", ""));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn every_case_passes_by_default() {
        let m = compare(&report(), &Expectations::default());
        let ids: Vec<_> = m.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "add.result@1.1.0",
                "status.ready@1.1.0",
                "input.garbage-stdin"
            ]
        );
    }

    #[test]
    fn drift_either_way_is_a_mismatch() {
        let e = exp(&[
            ("*@1.1.0", Outcome::NotApplicable),
            ("input.garbage-stdin", Outcome::Fail),
        ]);
        assert!(compare(&report(), &e).is_empty());
        // The plugin got better: a listed failure passes.
        let mut r = report();
        r.cases[3].outcome = Outcome::Pass;
        assert_eq!(compare(&r, &e)[0].id, "input.garbage-stdin");
        // A stale key is noticed.
        let e = exp(&[
            ("*@1.1.0", Outcome::NotApplicable),
            ("input.garbage-stdin", Outcome::Fail),
            ("gc.*@0.4.0", Outcome::Fail),
        ]);
        let m = compare(&report(), &e);
        assert_eq!(m.len(), 1);
        assert!(m[0].got.is_none());
    }

    #[test]
    fn the_longest_key_wins() {
        let e = exp(&[
            ("*@1.1.0", Outcome::NotApplicable),
            ("status.ready@1.1.0", Outcome::Fail),
        ]);
        assert_eq!(e.for_case("status.ready@1.1.0").0, Outcome::Fail);
        assert_eq!(e.for_case("add.result@1.1.0").0, Outcome::NotApplicable);
        assert_eq!(e.for_case("add.result@1.0.0").0, Outcome::Pass);
    }

    #[test]
    fn reports_render_and_escape() {
        let r = report();
        let e = Expectations::default();
        let x = junit(&r, &e);
        assert!(
            x.contains("failures=\"3\"") && x.contains("m &lt;&amp;&gt;"),
            "{x}"
        );
        let md = markdown(&r, &e);
        assert!(md.contains("| `input.garbage-stdin` | MUST |"), "{md}");
        let sbs = side_by_side(&[("a".into(), r.clone()), ("b".into(), r)]);
        assert!(
            sbs.contains("| `add.result@1.0.0` | MUST | pass | pass |"),
            "{sbs}"
        );
    }
}
