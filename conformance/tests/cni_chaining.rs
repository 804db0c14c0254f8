//! weir as the first plugin of a conflist followed by Debian's `portmap`,
//! `bandwidth` and `tuning`, run as libcni runs a chain: ADD in order with each result
//! passed on as prevResult, CHECK with the final result, DEL in reverse.
//! The node is IPv4-only and CHECK skips portmap: Debian's portmap (1.1.1)
//! fails CHECK whatever the first plugin is. And weir after Debian's
//! `loopback`, keeping its prevResult.

use std::path::PathBuf;

use serde_json::json;
use weir_conformance::{
    cni::{self, Chain, DEBIAN_PLUGIN_DIR, Invocation},
    netns::run,
    node::{NodeOptions, TestNode},
};

fn nat_rules(node: &TestNode) -> String {
    let mut cmd = node.netns.command("iptables-save").expect("cmd");
    cmd.args(["-t", "nat"]);
    run(&mut cmd).expect("iptables-save")
}

#[test]
fn weir_then_portmap_bandwidth_and_tuning() {
    for plugin in ["portmap", "bandwidth", "tuning"] {
        assert!(
            PathBuf::from(DEBIAN_PLUGIN_DIR).join(plugin).exists(),
            "Debian's {plugin} is missing: apt-get install containernetworking-plugins (cargo xtask setup)"
        );
    }
    // IPv4 only: Debian's portmap 1.1.1 CHECKs its IPv6 chain against its
    // IPv4 rules and fails on every dual-stack pod.
    let node = TestNode::new(NodeOptions {
        pod_cidrs: vec!["10.77.0.0/24".parse().expect("cidr")],
        ..NodeOptions::default()
    })
    .expect("node");
    let pod = node.pod_netns("chain").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();

    let mut weir = node.config("1.0.0");
    let obj = weir.as_object_mut().expect("object");
    obj.remove("cniVersion");
    obj.remove("name");
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "weirnet",
        "plugins": [
            weir,
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
        ],
    });
    let bin = node.bin.clone();
    let chain = Chain {
        list,
        resolve: Box::new(move |kind| {
            if kind == "weir" {
                bin.clone()
            } else {
                PathBuf::from(DEBIAN_PLUGIN_DIR).join(kind)
            }
        }),
    };
    let runtime = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {
            "ingressRate": 8_000_000, "ingressBurst": 1_000_000,
            "egressRate": 8_000_000, "egressBurst": 1_000_000,
        },
    });
    let cid = node.container_id("chain");
    let mut base = Invocation::new("ADD", &cid, &netns, "eth0", json!({}));
    base.args = cni::kubernetes_args("default", "chained", &cid);

    let result = chain
        .add(&base, &runtime, Some(&node.netns))
        .expect("ADD chain");
    // The last plugin's result still carries weir's interfaces and addresses.
    let ifs = result["interfaces"].as_array().expect("interfaces");
    assert!(
        ifs.iter()
            .any(|i| i["name"] == "eth0" && i["sandbox"] == netns.as_str()),
        "{result}"
    );
    let v4 = result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    assert!(v4.starts_with("10.77.0."), "{result}");

    // tuning wrote its sysctl inside the pod, portmap its DNAT on the node.
    assert_eq!(pod.sysctl("net.core.somaxconn").expect("sysctl"), "512");
    let nat = nat_rules(&node);
    assert!(nat.contains("18080"), "portmap DNAT rule: {nat}");
    let pod_ip = v4.split('/').next().expect("ip");
    assert!(
        nat.contains(&format!("{pod_ip}:80")),
        "DNAT to the pod: {nat}"
    );

    // CHECK through the chain, less portmap: Debian's portmap 1.1.1 looks
    // for an IPv6 chain it never made and fails every CHECK.
    let mut checked = chain.list.clone();
    checked["plugins"]
        .as_array_mut()
        .expect("plugins")
        .retain(|p| p["type"] != "portmap");
    let bin = node.bin.clone();
    let check_chain = Chain {
        list: checked,
        resolve: Box::new(move |kind| {
            if kind == "weir" {
                bin.clone()
            } else {
                PathBuf::from(DEBIAN_PLUGIN_DIR).join(kind)
            }
        }),
    };
    check_chain
        .check(&base, &result, &runtime, Some(&node.netns))
        .unwrap_or_else(|e| panic!("CHECK chain: {e:#}"));

    // bandwidth shaped the host end (ingress) and made an ifb for egress.
    let host = ifs[0]["name"].as_str().expect("host name");
    let qdiscs = node.netns.ip_json(&["link", "show"]).expect("links");
    assert!(
        qdiscs.as_array().expect("links").len() >= 3,
        "bandwidth's ifb device exists: {qdiscs}"
    );
    let mut tc = node.netns.command("tc").expect("cmd");
    tc.args(["qdisc", "show", "dev", host]);
    let tc = run(&mut tc).expect("tc");
    assert!(tc.contains("tbf"), "token bucket on {host}: {tc}");

    chain
        .del(&base, Some(&result), &runtime, Some(&node.netns))
        .expect("DEL chain");
    let nat = nat_rules(&node);
    assert!(!nat.contains("18080"), "portmap removed its rule: {nat}");
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
    assert_eq!(pod.link_names().expect("links"), ["lo"]);
    // A second DEL of the whole chain, without a result, still succeeds.
    chain
        .del(&base, None, &runtime, Some(&node.netns))
        .expect("second DEL chain");
}

/// weir after another plugin: it keeps the prevResult and appends its own
/// interfaces and addresses, with the interface indexes shifted.
#[test]
fn loopback_then_weir_keeps_the_previous_result() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("lo").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let mut weir = node.config("1.0.0");
    let obj = weir.as_object_mut().expect("object");
    obj.remove("cniVersion");
    obj.remove("name");
    let bin = node.bin.clone();
    let chain = Chain {
        list: json!({
            "cniVersion": "1.0.0",
            "name": "weirnet",
            "plugins": [{"type": "loopback"}, weir],
        }),
        resolve: Box::new(move |kind| {
            if kind == "weir" {
                bin.clone()
            } else {
                PathBuf::from(DEBIAN_PLUGIN_DIR).join(kind)
            }
        }),
    };
    let cid = node.container_id("lo");
    let base = Invocation::new("ADD", &cid, &netns, "eth0", json!({}));
    let runtime = json!({});
    let result = chain
        .add(&base, &runtime, Some(&node.netns))
        .expect("ADD chain");
    let ifs = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 3, "lo, the host end, eth0: {result}");
    assert_eq!(ifs[0]["name"], "lo");
    assert_eq!(ifs[2]["name"], "eth0");
    let ips = result["ips"].as_array().expect("ips");
    assert!(
        ips.iter()
            .any(|ip| ip["address"] == "127.0.0.1/8" && ip["interface"] == 0),
        "the loopback's address stays: {result}"
    );
    let ours: Vec<_> = ips
        .iter()
        .filter(|ip| {
            ip["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("10.77."))
        })
        .collect();
    assert_eq!(ours.len(), 1, "{result}");
    assert_eq!(ours[0]["interface"], 2, "shifted index: {result}");
    chain
        .check(&base, &result, &runtime, Some(&node.netns))
        .unwrap_or_else(|e| panic!("CHECK chain: {e:#}"));
    chain
        .del(&base, Some(&result), &runtime, Some(&node.netns))
        .expect("DEL chain");
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
}
