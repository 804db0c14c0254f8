//! `cni-conformance` against Debian's reference plugins (ptp + host-local,
//! bridge + host-local then tuning), whose outcomes must match their
//! checked-in expectation files exactly, and against weir, which must pass
//! every case. Runs as root; every run owns its namespaces, state directory
//! and (for weir) pin root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use weir_conformance::{
    cni,
    suite::{
        self, Options, Outcome, Report,
        report::{self, Expectations},
    },
};

fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn config(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(here(rel)).expect("read the config");
    serde_json::from_str(&text).expect("parse the config")
}

/// Runs the suite and fails with the whole table when an outcome differs
/// from `expect`.
fn run_and_compare(options: &Options, expect: &Expectations) -> Report {
    let report = suite::run(options).expect("the run could be made");
    let table = report::summary(&report, expect);
    println!("{table}");
    let mismatches = report::compare(&report, expect);
    assert!(
        mismatches.is_empty(),
        "{} outcome(s) differ from the expectation:\n{table}",
        mismatches.len()
    );
    report
}

#[test]
fn reference_ptp_host_local_matches_its_expectations() {
    let options = Options::new(cni::DEBIAN_PLUGIN_DIR, config("configs/ptp.json"));
    let expect = Expectations::load(&here("expect/ptp.json")).unwrap();
    let report = run_and_compare(&options, &expect);
    assert_eq!(report.claimed, ["0.3.1", "0.4.0", "1.0.0"]);
    assert_cleaned_up(&report);
}

#[test]
fn reference_bridge_host_local_chain_matches_its_expectations() {
    let options = Options::new(cni::DEBIAN_PLUGIN_DIR, config("configs/bridge.conflist"));
    let expect = Expectations::load(&here("expect/bridge.json")).unwrap();
    let report = run_and_compare(&options, &expect);
    assert_eq!(report.plugin, "bridge+tuning");
    assert_eq!(report.claimed, ["0.3.1", "0.4.0", "1.0.0"]);
}

#[test]
fn weir_passes_every_case() {
    let bin = cni::weir_bin();
    let mut options = Options::new(bin.parent().unwrap(), config("configs/weir.json"));
    options.weir_node = Some(
        suite::weir::DEFAULT_POD_CIDRS
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
    );
    let report = run_and_compare(&options, &Expectations::default());
    assert_eq!(report.claimed, suite::DEFAULT_VERSIONS);
    assert!(report.cases.iter().all(|c| c.outcome == Outcome::Pass));
    assert_cleaned_up(&report);
    // Every case of the suite ran: 1 global, 13 per version (4 of which
    // start at 0.4.0, so 9 at 0.3.1), 10 at the newest version, 3 at 1.1.0.
    assert_eq!(report.cases.len(), 1 + 9 + 13 * 3 + 10 + 3);
}

/// Nothing of the run is left: namespaces, the state directory, pins.
fn assert_cleaned_up(report: &Report) {
    let prefix = &report.prefix;
    assert!(
        prefix.starts_with("cc-") && prefix.ends_with('-'),
        "{prefix}"
    );
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        !list.contains(prefix.as_str()),
        "namespaces left behind:\n{list}"
    );
    let id = prefix.trim_end_matches('-');
    assert!(
        !std::env::temp_dir().join(id).exists(),
        "state directory {id} left behind"
    );
    assert!(
        !Path::new("/sys/fs/bpf").join(id).exists(),
        "pin root {id} left behind"
    );
}

/// A plugin that lies: it claims 1.0.0, answers every ADD with the same
/// made-up result and succeeds at everything else. The suite must catch it.
const LIAR: &str = r#"#!/bin/sh
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
ADD) echo '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"zz","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"version":"4","address":"10.9.9.9/24","interface":3}]}' ;;
esac
exit 0
"#;

#[test]
fn a_lying_plugin_fails_the_cases_it_breaks() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cc-liar-{}", weir_conformance::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let _rm = Rm(dir.clone());
    let exe = dir.join("liar");
    std::fs::write(&exe, LIAR).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut options = Options::new(
        &dir,
        serde_json::json!({"cniVersion": "1.0.0", "name": "liars", "type": "liar"}),
    );
    options.versions = vec!["1.0.0".into(), "1.1.0".into()];
    options.parallel = 3;
    let report = suite::run(&options).unwrap();
    println!("{}", report::summary(&report, &Expectations::default()));
    let outcome = |id: &str| {
        report
            .case(id)
            .unwrap_or_else(|| panic!("no case {id}"))
            .outcome
    };
    for id in [
        "add.result@1.0.0",
        "add.netns-matches@1.0.0",
        "check.missing-address@1.0.0",
        "check.missing-interface@1.0.0",
        "input.no-command",
        "input.unknown-command",
        "input.bad-container-id",
        "input.bad-ifname",
        "input.unsupported-version",
        "input.garbage-stdin",
        "parallel.add-del",
    ] {
        assert_eq!(outcome(id), Outcome::Fail, "{id}");
    }
    let msg = |id: &str| report.case(id).unwrap().message.clone();
    assert!(
        msg("add.result@1.0.0").contains("ips[0].version"),
        "{}",
        msg("add.result@1.0.0")
    );
    assert!(msg("add.result@1.0.0").contains("out of range"));
    assert!(msg("add.result@1.0.0").contains("interfaces[0].mac"));
    assert!(
        msg("add.netns-matches@1.0.0").contains("CNI_IFNAME net1"),
        "{}",
        msg("add.netns-matches@1.0.0")
    );
    assert!(msg("parallel.add-del").contains("handed out twice"));
    for id in [
        "version.output",
        "del.second@1.0.0",
        "del.unknown-container@1.0.0",
    ] {
        assert_eq!(outcome(id), Outcome::Pass, "{id}");
    }
    for id in [
        "add.result@1.1.0",
        "status.ready@1.1.0",
        "gc.releases-stale@1.1.0",
    ] {
        assert_eq!(outcome(id), Outcome::NotApplicable, "{id}");
    }
    assert_cleaned_up(&report);
}

struct Rm(PathBuf);

impl Drop for Rm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary: exit status, reports, `--expect`; the reference plugin's
/// known deviation makes a run without expectations fail.
#[test]
fn the_binary_writes_reports_and_its_exit_status_follows_the_expectations() {
    let dir = std::env::temp_dir().join(format!("cc-cli-{}", weir_conformance::random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let _rm = Rm(dir.clone());
    let bin = env!("CARGO_BIN_EXE_cni-conformance");
    let (xml, md, json) = (dir.join("r.xml"), dir.join("r.md"), dir.join("r.json"));
    let out = Command::new(bin)
        .args([
            "--plugin-dir",
            cni::DEBIAN_PLUGIN_DIR,
            "--versions",
            "1.0.0,1.1.0",
        ])
        .arg("--config")
        .arg(here("configs/ptp.json"))
        .arg("--expect")
        .arg(here("expect/ptp.json"))
        .arg("--report")
        .arg(&xml)
        .arg("--report")
        .arg(&md)
        .arg("--report")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 differ from the expectation"), "{stdout}");

    let xml = std::fs::read_to_string(&xml).unwrap();
    assert!(
        xml.contains("<testsuite name=\"cni-conformance.ptp\""),
        "{xml}"
    );
    assert!(xml.contains("failures=\"0\""), "{xml}");
    assert!(xml.contains("<skipped"), "{xml}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("| `input.no-command` | MUST |") && md.contains("| fail | fail |"),
        "{md}"
    );
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.versions, ["1.0.0", "1.1.0"]);

    let side = Command::new(bin)
        .arg("--side-by-side")
        .arg(format!("ptp={}", json.display()))
        .output()
        .unwrap();
    let side = String::from_utf8_lossy(&side.stdout);
    assert!(
        side.contains("| `add.result@1.0.0` | MUST | pass |"),
        "{side}"
    );

    // Without the expectation file the deviation counts: exit 1.
    let out = Command::new(bin)
        .args([
            "--plugin-dir",
            cni::DEBIAN_PLUGIN_DIR,
            "--versions",
            "1.0.0",
        ])
        .arg("--config")
        .arg(here("configs/ptp.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISMATCH input.no-command"), "{stdout}");
}
