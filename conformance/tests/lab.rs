//! The lab (the README's first command) end to end: it comes up with every
//! pod reaching every pod and the outside host, refuses a second start while
//! it runs, and `down` removes everything it made.

use std::{path::PathBuf, process::Command};

fn lab(state: &PathBuf, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir-lab"))
        .arg("--state")
        .arg(state)
        .args(args)
        .env(
            "WEIR_BIN_DIR",
            PathBuf::from(env!("CARGO_BIN_EXE_weir-lab"))
                .parent()
                .unwrap(),
        )
        .output()
        .expect("run weir-lab");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Tears the lab down if the test fails half-way.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&self.0, &["down"]);
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

#[test]
fn the_lab_comes_up_connected_says_so_twice_and_goes_away() {
    let dir =
        std::env::temp_dir().join(format!("weir-lab-test-{}", weir_conformance::random_hex(8)));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.json");
    let _down = Down(state.clone());

    let (ok, out) = lab(&state, &["up", "--pods-per-node", "2"]);
    assert!(ok, "lab up failed:\n{out}");
    assert!(out.contains("pod-to-pod connectivity"), "{out}");
    assert!(!out.contains("FAIL"), "every pair answers:\n{out}");
    assert!(out.contains("0 problem(s)"), "{out}");
    assert!(
        out.contains("ClusterIP 10.96.0.10:80"),
        "the lab has a service:\n{out}"
    );
    assert!(
        out.contains("NodePort 192.168.100.1:30080"),
        "and a NodePort:\n{out}"
    );
    assert!(
        out.contains("cargo xtask lab down"),
        "tells how to tear it down:\n{out}"
    );

    let (ok, again) = lab(&state, &["up"]);
    assert!(ok && again.contains("already up"), "{again}");
    let (ok, status) = lab(&state, &["status"]);
    assert!(ok && status.contains("is up"), "{status}");

    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let id = recorded["id"].as_str().unwrap().to_string();
    let (ok, gone) = lab(&state, &["down"]);
    assert!(ok, "{gone}");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| !n.contains(&id)),
        "namespaces left: {left:?}"
    );
    let pins: Vec<String> = std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(pins.iter().all(|n| !n.contains(&id)), "pins left: {pins:?}");
    let (ok, status) = lab(&state, &["status"]);
    assert!(!ok && status.contains("No lab"), "{status}");
}
