//! The operator CLI against state written by the library.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::{range, tempdir};
use weir_ipam::{Allocation, Ipam, Key, Pool};

const CLI: &str = env!("CARGO_BIN_EXE_weir-ipam");

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(CLI)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("running weir-ipam")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn list_show_release_gc_check_status() {
    let tmp = tempdir();
    let dir = tmp.path().join("weir");
    let pool = Pool::from_config(&[vec![range("10.5.0.0/29")], vec![range("fd05::/125")]]).unwrap();
    let ipam = Ipam::open(&dir, pool).unwrap();
    let labels = BTreeMap::from([("pod".to_string(), "default/web-0".to_string())]);
    for cid in ["aaa", "bbb", "ccc"] {
        ipam.allocate(&Key::new(cid, "eth0"), &labels).unwrap();
    }

    let table = stdout(&cli(&dir, &["list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("CONTAINER ID  IFNAME  ADDRESSES"),
        "{table}"
    );
    assert!(
        lines[1].contains("aaa") && lines[1].contains("10.5.0.1/29,fd05::1/125"),
        "{table}"
    );
    assert!(lines[1].ends_with("pod=default/web-0"), "{table}");

    let json: Vec<Allocation> =
        serde_json::from_str(&stdout(&cli(&dir, &["list", "-o", "json"]))).unwrap();
    assert_eq!(json, ipam.list().unwrap());
    let one: Vec<Allocation> =
        serde_json::from_str(&stdout(&cli(&dir, &["show", "bbb", "-o", "json"]))).unwrap();
    assert_eq!(
        one,
        vec![ipam.get(&Key::new("bbb", "eth0")).unwrap().unwrap()]
    );
    assert!(!cli(&dir, &["show", "nope"]).status.success());

    assert!(stdout(&cli(&dir, &["release", "aaa"])).contains("10.5.0.1/29"));
    assert_eq!(ipam.get(&Key::new("aaa", "eth0")).unwrap(), None);

    let refused = cli(&dir, &["gc"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--keep-none"));
    assert!(stdout(&cli(&dir, &["gc", "--keep", "bbb/eth0"])).contains("ccc"));
    let left: Vec<Key> = ipam.list().unwrap().into_iter().map(|a| a.key).collect();
    assert_eq!(left, [Key::new("bbb", "eth0")]);

    assert_eq!(stdout(&cli(&dir, &["check"])).trim(), "ok");
    std::fs::write(
        dir.join("ips/10.5.0.6"),
        r#"{"containerId":"ghost","ifname":"eth0"}"#,
    )
    .unwrap();
    let leak = cli(&dir, &["check"]);
    assert!(!leak.status.success());
    assert!(
        String::from_utf8_lossy(&leak.stdout).contains("orphan      10.5.0.6  held by ghost/eth0")
    );

    assert!(
        !cli(&dir, &["status"]).status.success(),
        "status needs the pool"
    );
    let status = stdout(&cli(
        &dir,
        &[
            "--cidr",
            "10.5.0.0/29",
            "--cidr",
            "fd05::/125",
            "status",
            "-o",
            "json",
        ],
    ));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["canAllocate"], true);
    assert_eq!(status["sets"][0]["allocated"], 2);
    assert_eq!(status["sets"][0]["capacity"], 6);
    assert_eq!(status["sets"][1]["allocated"], 1);

    // Capacities beyond 64 bits print exactly.
    let huge = stdout(&cli(
        &dir,
        &[
            "--cidr",
            "10.5.0.0/29",
            "--cidr",
            "fd05::/48",
            "status",
            "-o",
            "json",
        ],
    ));
    assert!(
        huge.contains("\"capacity\": 1208925819614629174706175"),
        "{huge}"
    );

    let missing = cli(&tmp.path().join("absent"), &["list"]);
    assert!(!missing.status.success());
    assert!(
        !tmp.path().join("absent").exists(),
        "inspection creates nothing"
    );
}
