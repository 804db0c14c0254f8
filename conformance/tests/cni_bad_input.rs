//! A table of bad invocations of the real `weir` binary (environment, stdin,
//! config, node state). Each must fail with its CNI code, print exactly one
//! JSON error object, and create nothing: no link on the node or in the pod,
//! no reservation, no link pin, no endpoint entry or record.

use std::process::Stdio;

use serde_json::{Value, json};
use weir_conformance::{
    cni::{self, Invocation},
    node::{NodeOptions, TestNode},
    random_hex,
};

/// How a case changes the good ADD invocation.
enum Change {
    /// Remove an environment variable.
    Unset(&'static str),
    /// Set an environment variable.
    Set(&'static str, String),
    /// Replace stdin with raw bytes.
    Stdin(Vec<u8>),
    /// Edit the config.
    Config(Box<dyn Fn(&mut Value)>),
}

struct Case {
    name: &'static str,
    changes: Vec<Change>,
    code: u64,
    /// A word the message must contain (the field or variable it names).
    names: &'static str,
}

fn case(name: &'static str, code: u64, names: &'static str, changes: Vec<Change>) -> Case {
    Case {
        name,
        changes,
        code,
        names,
    }
}

fn conf(f: impl Fn(&mut Value) + 'static) -> Change {
    Change::Config(Box::new(f))
}

fn set(var: &'static str, v: &str) -> Change {
    Change::Set(var, v.to_owned())
}

fn ranges(r: Value) -> Change {
    conf(move |c| c["ipam"] = json!({ "ranges": r.clone() }))
}

fn cases() -> Vec<Case> {
    let missing_ns = format!("/run/netns/weir-missing-{}", random_hex(8));
    vec![
        // The environment.
        case(
            "no CNI_COMMAND",
            4,
            "CNI_COMMAND",
            vec![Change::Unset("CNI_COMMAND")],
        ),
        case(
            "lowercase command",
            4,
            "CNI_COMMAND",
            vec![set("CNI_COMMAND", "add")],
        ),
        case(
            "unknown command",
            4,
            "CNI_COMMAND",
            vec![set("CNI_COMMAND", "REMOVE")],
        ),
        case(
            "no CNI_CONTAINERID",
            4,
            "CNI_CONTAINERID",
            vec![Change::Unset("CNI_CONTAINERID")],
        ),
        case(
            "empty CNI_CONTAINERID",
            4,
            "CNI_CONTAINERID",
            vec![set("CNI_CONTAINERID", "")],
        ),
        case(
            "container id starts with -",
            4,
            "CNI_CONTAINERID",
            vec![set("CNI_CONTAINERID", "-abc")],
        ),
        case(
            "container id with /",
            4,
            "CNI_CONTAINERID",
            vec![set("CNI_CONTAINERID", "ab/../cd")],
        ),
        case(
            "container id with a space",
            4,
            "CNI_CONTAINERID",
            vec![set("CNI_CONTAINERID", "ab cd")],
        ),
        case(
            "no CNI_IFNAME",
            4,
            "CNI_IFNAME",
            vec![Change::Unset("CNI_IFNAME")],
        ),
        case(
            "empty CNI_IFNAME",
            4,
            "CNI_IFNAME",
            vec![set("CNI_IFNAME", "")],
        ),
        case(
            "16-character ifname",
            4,
            "CNI_IFNAME",
            vec![set("CNI_IFNAME", "0123456789abcdef")],
        ),
        case(
            "ifname with /",
            4,
            "CNI_IFNAME",
            vec![set("CNI_IFNAME", "eth/0")],
        ),
        case(
            "ifname with :",
            4,
            "CNI_IFNAME",
            vec![set("CNI_IFNAME", "eth:0")],
        ),
        case(
            "ifname with a space",
            4,
            "CNI_IFNAME",
            vec![set("CNI_IFNAME", "eth 0")],
        ),
        case("ifname ..", 4, "CNI_IFNAME", vec![set("CNI_IFNAME", "..")]),
        case(
            "no CNI_NETNS",
            4,
            "CNI_NETNS",
            vec![Change::Unset("CNI_NETNS")],
        ),
        case(
            "empty CNI_NETNS on ADD",
            4,
            "CNI_NETNS",
            vec![set("CNI_NETNS", "")],
        ),
        case(
            "relative CNI_NETNS",
            4,
            "CNI_NETNS",
            vec![set("CNI_NETNS", "run/netns/x")],
        ),
        case(
            "CNI_NETNS that does not exist",
            3,
            "does not exist",
            vec![Change::Set("CNI_NETNS", missing_ns)],
        ),
        case(
            "CNI_NETNS that is a plain file",
            4,
            "namespace",
            vec![set("CNI_NETNS", "/etc/hostname")],
        ),
        case(
            "CNI_NETNS that is a mount namespace",
            4,
            "network namespace",
            vec![set("CNI_NETNS", "/proc/self/ns/mnt")],
        ),
        case(
            "CNI_ARGS without =",
            4,
            "CNI_ARGS",
            vec![set("CNI_ARGS", "K8S_POD_NAME")],
        ),
        case(
            "unknown CNI_ARGS key",
            4,
            "FOO",
            vec![set("CNI_ARGS", "FOO=bar")],
        ),
        case(
            "IgnoreUnknown not a boolean",
            4,
            "IgnoreUnknown",
            vec![set("CNI_ARGS", "IgnoreUnknown=maybe")],
        ),
        // stdin.
        case("empty stdin", 6, "empty", vec![Change::Stdin(Vec::new())]),
        case(
            "stdin not JSON",
            6,
            "decode",
            vec![Change::Stdin(b"cniVersion: 1.0.0".to_vec())],
        ),
        case(
            "truncated JSON",
            6,
            "decode",
            vec![Change::Stdin(br#"{"cniVersion":"1.0.0","name":"#.to_vec())],
        ),
        case(
            "a JSON array",
            6,
            "object",
            vec![Change::Stdin(b"[1,2]".to_vec())],
        ),
        // The config.
        case(
            "no cniVersion",
            7,
            "cniVersion",
            vec![conf(|c| {
                c.as_object_mut().unwrap().remove("cniVersion");
            })],
        ),
        case(
            "cniVersion 0.2.0",
            1,
            "0.2.0",
            vec![conf(|c| c["cniVersion"] = json!("0.2.0"))],
        ),
        case(
            "cniVersion 2.0.0",
            1,
            "2.0.0",
            vec![conf(|c| c["cniVersion"] = json!("2.0.0"))],
        ),
        case(
            "cniVersion a number",
            7,
            "cniVersion",
            vec![conf(|c| c["cniVersion"] = json!(1))],
        ),
        case(
            "no name",
            7,
            "name",
            vec![conf(|c| {
                c.as_object_mut().unwrap().remove("name");
            })],
        ),
        case(
            "name with a path",
            7,
            "name",
            vec![conf(|c| c["name"] = json!("../etc"))],
        ),
        case(
            "no type",
            7,
            "type",
            vec![conf(|c| {
                c.as_object_mut().unwrap().remove("type");
            })],
        ),
        case(
            "mtu a string",
            7,
            "mtu",
            vec![conf(|c| c["mtu"] = json!("big"))],
        ),
        case(
            "mtu too small",
            7,
            "mtu",
            vec![conf(|c| c["mtu"] = json!(100))],
        ),
        case(
            "mtu too large",
            7,
            "mtu",
            vec![conf(|c| c["mtu"] = json!(70000))],
        ),
        case(
            "IPv6 range with mtu 1000",
            7,
            "mtu",
            vec![
                conf(|c| c["mtu"] = json!(1000)),
                ranges(json!([[{"subnet": "fd00:9::/64"}]])),
            ],
        ),
        case(
            "ipam.type host-local",
            2,
            "ipam.type",
            vec![conf(|c| c["ipam"] = json!({"type": "host-local"}))],
        ),
        case(
            "unknown ipam field",
            2,
            "ipam.subnet",
            vec![conf(|c| c["ipam"] = json!({"subnet": "10.1.0.0/24"}))],
        ),
        case(
            "ipam not an object",
            7,
            "ipam",
            vec![conf(|c| c["ipam"] = json!("10.1.0.0/24"))],
        ),
        case(
            "empty ipam.ranges",
            7,
            "ipam.ranges",
            vec![ranges(json!([]))],
        ),
        case(
            "invalid subnet",
            7,
            "subnet",
            vec![ranges(json!([[{"subnet": "10.0.0.0/33"}]]))],
        ),
        case(
            "rangeStart outside the subnet",
            7,
            "rangeStart",
            vec![ranges(
                json!([[{"subnet": "10.9.0.0/24", "rangeStart": "10.8.0.5"}]]),
            )],
        ),
        case(
            "rangeStart after rangeEnd",
            7,
            "ipam.ranges[0][0]",
            vec![ranges(
                json!([[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.50", "rangeEnd": "10.9.0.10"}]]),
            )],
        ),
        case(
            "gateway outside the subnet",
            7,
            "gateway",
            vec![ranges(
                json!([[{"subnet": "10.9.0.0/24", "gateway": "10.10.0.1"}]]),
            )],
        ),
        case(
            "overlapping ranges",
            7,
            "ipam.ranges",
            vec![ranges(
                json!([[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.0.0/25"}]]),
            )],
        ),
        case(
            "attachMode unknown",
            7,
            "attachMode",
            vec![conf(|c| c["attachMode"] = json!("xdp"))],
        ),
        case(
            "logLevel unknown",
            7,
            "logLevel",
            vec![conf(|c| c["logLevel"] = json!("verbose"))],
        ),
        case(
            "relative pinRoot",
            7,
            "pinRoot",
            vec![conf(|c| c["pinRoot"] = json!("sys/fs/bpf"))],
        ),
        case(
            "ipamStateDir with ..",
            7,
            "ipamStateDir",
            vec![conf(|c| c["ipamStateDir"] = json!("/var/lib/../tmp"))],
        ),
        case(
            "dns a string",
            7,
            "dns",
            vec![conf(|c| c["dns"] = json!("8.8.8.8"))],
        ),
        case(
            "prevResult garbage",
            7,
            "prevResult",
            vec![conf(|c| c["prevResult"] = json!({"ips": "x"}))],
        ),
        // The node's state.
        case(
            "datapath pins missing",
            11,
            "pins",
            vec![conf(|c| {
                c["pinRoot"] = json!(format!("/sys/fs/bpf/weir-missing-{}", random_hex(8)))
            })],
        ),
        case(
            "node.json missing",
            11,
            "node.json",
            vec![conf(|c| {
                c["nodeInfo"] = json!(format!("/run/weir-missing-{}/node.json", random_hex(8)))
            })],
        ),
        case(
            "CHECK below 0.4.0",
            1,
            "CHECK",
            vec![
                set("CNI_COMMAND", "CHECK"),
                conf(|c| c["cniVersion"] = json!("0.3.1")),
            ],
        ),
        case(
            "STATUS below 1.1.0",
            1,
            "STATUS",
            vec![
                set("CNI_COMMAND", "STATUS"),
                conf(|c| c["cniVersion"] = json!("1.0.0")),
            ],
        ),
        case(
            "GC below 1.1.0",
            1,
            "GC",
            vec![
                set("CNI_COMMAND", "GC"),
                conf(|c| c["cniVersion"] = json!("1.0.0")),
            ],
        ),
        case(
            "GC without valid-attachments",
            7,
            "valid-attachments",
            vec![
                set("CNI_COMMAND", "GC"),
                conf(|c| c["cniVersion"] = json!("1.1.0")),
            ],
        ),
    ]
}

#[test]
fn every_bad_input_has_its_code_and_creates_nothing() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("b").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    // node.json with garbage, for its own case below.
    let garbage = node.dir.join("garbage.json");
    std::fs::write(&garbage, b"{not json").expect("write");

    let mut table = cases();
    let g = garbage.clone();
    table.push(case(
        "node.json garbage",
        5,
        "garbage.json",
        vec![conf(move |c| c["nodeInfo"] = json!(g))],
    ));
    assert!(table.len() >= 30, "{} cases", table.len());

    let mut failures = Vec::new();
    for (i, case) in table.iter().enumerate() {
        let cid = node.container_id(&format!("bad{i}"));
        let mut inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.0.0"));
        inv.args = cni::kubernetes_args("default", "bad", &cid);
        let mut stdin = None;
        let mut unset = Vec::new();
        for change in &case.changes {
            match change {
                Change::Unset(var) => unset.push(*var),
                Change::Set("CNI_COMMAND", v) => inv.command = v.clone(),
                Change::Set("CNI_CONTAINERID", v) => inv.container_id = v.clone(),
                Change::Set("CNI_IFNAME", v) => inv.ifname = v.clone(),
                Change::Set("CNI_NETNS", v) => inv.netns = v.clone(),
                Change::Set("CNI_ARGS", v) => inv.args = v.clone(),
                Change::Set(var, _) => panic!("unknown variable {var}"),
                Change::Stdin(bytes) => stdin = Some(bytes.clone()),
                Change::Config(f) => f(&mut inv.config),
            }
        }
        let body = stdin.unwrap_or_else(|| serde_json::to_vec(&inv.config).unwrap());
        let mut cmd = cni::command(&node.bin, &inv, Some(&node.netns)).expect("command");
        for var in unset {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        {
            use std::io::Write;
            let _ = child.stdin.take().unwrap().write_all(&body);
        }
        let out = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let parsed: Result<Value, _> = serde_json::from_str(stdout.trim());
        let problem = match parsed {
            _ if out.status.success() => Some(format!("succeeded: {stdout}")),
            Err(e) => Some(format!("stdout is not one JSON object ({e}): {stdout:?}")),
            Ok(v) => {
                let keys: Vec<&String> = v
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                if v["code"].as_u64() != Some(case.code) {
                    Some(format!("code {} instead of {}: {v}", v["code"], case.code))
                } else if !v["msg"].as_str().is_some_and(|m| m.contains(case.names)) {
                    Some(format!("the message does not name {:?}: {v}", case.names))
                } else if !v["cniVersion"].is_string()
                    || keys
                        .iter()
                        .any(|k| !["cniVersion", "code", "msg", "details"].contains(&k.as_str()))
                {
                    Some(format!("not a CNI error object: {v}"))
                } else {
                    None
                }
            }
        };
        let left = node.leftovers().expect("leftovers");
        let pod_links = pod.link_names().expect("pod links");
        if let Some(p) = problem {
            failures.push(format!("{}: {p}", case.name));
        }
        if !left.is_empty() || pod_links != ["lo"] {
            failures.push(format!(
                "{}: left {left:?}, pod links {pod_links:?}",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The good invocation works on the same node: the table failed for its
    // own reasons, not because the node was broken.
    let cid = node.container_id("good");
    let inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.0.0"));
    node.weir(&inv).expect("run").ok().expect("ADD");
    let mut del = inv.clone();
    del.command = "DEL".into();
    assert!(node.weir(&del).expect("run").success);
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
}
