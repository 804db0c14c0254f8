//! The binary answers VERSION the way podman asks it (dummy environment,
//! empty container id) and refuses an unknown command with code 4. The full
//! protocol suite runs against this binary in `conformance/`.

use std::{
    io::Write,
    process::{Command, Stdio},
};

fn run(command: &str, stdin: &str) -> (bool, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "")
        .env("CNI_NETNS", "dummy")
        .env("CNI_IFNAME", "dummy")
        .env("CNI_PATH", "dummy")
        .env("WEIR_LOG_FILE", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn weir");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let json = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    (out.status.success(), json)
}

#[test]
fn version_lists_every_supported_version_with_podman_dummy_env() {
    let (ok, v) = run("VERSION", r#"{"cniVersion":"0.4.0"}"#);
    assert!(ok, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn an_unknown_command_is_code_4() {
    let (ok, v) = run("FROB", r#"{"cniVersion":"1.0.0"}"#);
    assert!(!ok);
    assert_eq!(v["code"], 4);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"), "{v}");
}
