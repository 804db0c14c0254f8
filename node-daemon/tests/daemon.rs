//! The real `weir-node` binary in a network namespace of the test's own,
//! with the standalone manifest-directory node source. Runs as root.

mod common;

use std::{fs, net::IpAddr, path::Path};

use common::{Node, pairs};
use weir_common::{DropKey, DropReason, ENDPOINT_F_READY, Endpoint, Traffic};
use weir_datapath::{endpoint_info::EndpointInfo, maps::EndpointMap, node_info::NodeInfo};

fn metric(body: &str, line_prefix: &str) -> Option<String> {
    body.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_string)
}

#[test]
fn yaml_nodes_become_map_entries_and_routes_and_follow_the_directory() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    // Two remote nodes in one multi-document file.
    fs::write(
        node.nodes_dir().join("remotes.yaml"),
        format!(
            "{}---\n{}",
            common::node_yaml("node-b", &["10.244.1.0/24"], &["192.0.2.2"]),
            common::node_yaml("node-c", &["10.244.2.0/24"], &["192.0.2.3"])
        ),
    )
    .unwrap();
    let daemon = node.start("node-a", &node.nodes_dir());

    let want = pairs(&[
        ("10.244.1.0/24", "192.0.2.2"),
        ("10.244.2.0/24", "192.0.2.3"),
    ]);
    daemon.until(60, "NODES entries", || {
        (node.nodes_map().as_ref() == Some(&want)).then_some(())
    });
    daemon.until(30, "node routes", || {
        (node.ns.weir_routes() == want).then_some(())
    });
    // The other nodes' own addresses are in the map too (no route), so that
    // pod traffic to them is forwarded, not masqueraded.
    let hosts = pairs(&[("192.0.2.2/32", "192.0.2.2"), ("192.0.2.3/32", "192.0.2.3")]);
    daemon.until(30, "node host entries", || {
        (node.node_host_entries().as_ref() == Some(&hosts)).then_some(())
    });

    // node.json: this node's CIDR and address, the uplink's MTU.
    let info = NodeInfo::read(&node.node_json()).expect("node.json written");
    assert_eq!(info.node_name, "node-a");
    assert_eq!(info.pod_cidrs, vec!["10.244.0.0/24".parse().unwrap()]);
    assert_eq!(info.node_ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(info.mtu, 1450);
    assert_eq!(info.abi_version, weir_common::ABI_VERSION);
    assert_eq!(info.pin_root, node.layout.root());

    // The one masquerade rule, matching the datapath's mark.
    let table = daemon.until(30, "the masquerade table", || node.ns.weir_nft_table());
    assert!(
        table.contains("meta mark & 0x00ff0000 == 0x00570000") && table.contains("masquerade"),
        "{table}"
    );
    assert_eq!(table.matches("masquerade comment").count(), 1, "{table}");

    // Health, readiness and metrics.
    assert_eq!(node.ns.http_get("/healthz").map(|r| r.0), Some(200));
    daemon.until(30, "readyz 200", || {
        (node.ns.http_get("/readyz")?.0 == 200).then_some(())
    });
    let (status, body) = node.ns.http_get("/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, "weir_map_entries{map=\"NODES\"}").as_deref(),
        Some("4"),
        "two remote pod CIDRs and two node addresses: {body}"
    );
    assert_eq!(
        metric(&body, "weir_map_capacity{map=\"NODES\"}"),
        Some(weir_common::capacity::NODES.to_string())
    );
    assert_eq!(
        metric(&body, "weir_reconcile_errors_total").as_deref(),
        Some("0")
    );
    assert_eq!(node.ns.http_get("/nope").map(|r| r.0), Some(404));

    // A node changes address, another disappears with its file.
    fs::write(
        node.nodes_dir().join("remotes.yaml"),
        common::node_yaml("node-b", &["10.244.1.0/24"], &["192.0.2.22"]),
    )
    .unwrap();
    let want = pairs(&[("10.244.1.0/24", "192.0.2.22")]);
    daemon.until(60, "node-c removed and node-b moved", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });

    // An invalid manifest keeps the last good node set.
    fs::write(
        node.nodes_dir().join("broken.yaml"),
        "kind: Node\nmetadata: {name: [\n",
    )
    .unwrap();
    daemon.until(30, "the source error to be counted", || {
        let body = node.ns.http_get("/metrics")?.1;
        (metric(&body, "weir_node_source_errors_total")? != "0").then_some(())
    });
    assert_eq!(node.nodes_map(), Some(want.clone()));
    assert_eq!(node.ns.weir_routes(), want);
}

#[test]
fn sigterm_leaves_the_datapath_and_a_restart_reconciles_without_flushing() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    node.write_node("b.yaml", "node-b", &["10.244.1.0/24"], &["192.0.2.2"]);
    node.write_node("c.yaml", "node-c", &["10.244.2.0/24"], &["192.0.2.3"]);
    let mut daemon = node.start("node-a", &node.nodes_dir());
    let both = pairs(&[
        ("10.244.1.0/24", "192.0.2.2"),
        ("10.244.2.0/24", "192.0.2.3"),
    ]);
    daemon.until(60, "both remotes", || {
        (node.nodes_map().as_ref() == Some(&both) && node.ns.weir_routes() == both).then_some(())
    });
    let status_before: serde_json::Value =
        serde_json::from_str(&node.weir_ok(&["status", "-o", "json"])).unwrap();

    assert!(
        daemon.terminate(),
        "clean exit on SIGTERM:\n{}",
        daemon.log()
    );
    // Everything stays, and the inspection commands work with the daemon down.
    assert!(node.layout.is_loaded());
    assert_eq!(node.nodes_map(), Some(both.clone()));
    assert_eq!(node.ns.weir_routes(), both);
    assert!(node.node_json().exists());
    let status: serde_json::Value =
        serde_json::from_str(&node.weir_ok(&["status", "-o", "json"])).unwrap();
    assert_eq!(status["pinsPresent"], true);
    assert_eq!(status["abiVersion"], weir_common::ABI_VERSION);
    assert_eq!(status["objectDigest"], status["thisBuildObjectDigest"]);
    assert_eq!(status["remotePodCidrs"], 2);
    assert_eq!(status["nodeInfo"]["nodeName"], "node-a");
    assert_eq!(status["programs"], status_before["programs"]);
    let table = node.weir_ok(&["bpf", "nodes", "list"]);
    assert!(table.starts_with("POD CIDR"), "{table}");
    assert!(table.contains("10.244.2.0/24   192.0.2.3"), "{table}");

    // Restart on a source that cannot sync: nothing is flushed, not ready.
    let missing = node.tmp.path().join("not-there-yet");
    let daemon = node.start("node-a", &missing);
    daemon.until(30, "healthz", || {
        (node.ns.http_get("/healthz")?.0 == 200).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(node.ns.http_get("/readyz").map(|r| r.0), Some(503));
    assert_eq!(node.nodes_map(), Some(both.clone()), "{}", daemon.log());
    assert_eq!(node.ns.weir_routes(), both);

    // The source appears, with node-c gone while the daemon was away.
    fs::create_dir(&missing).unwrap();
    for f in ["a.yaml", "b.yaml"] {
        fs::copy(node.nodes_dir().join(f), missing.join(f)).unwrap();
    }
    let only_b = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(60, "node-c removed after restart", || {
        (node.nodes_map().as_ref() == Some(&only_b) && node.ns.weir_routes() == only_b)
            .then_some(())
    });
    daemon.until(30, "readyz 200", || {
        (node.ns.http_get("/readyz")?.0 == 200).then_some(())
    });
}

#[test]
fn uninstall_removes_pins_routes_and_node_info_and_is_idempotent() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    node.write_node("b.yaml", "node-b", &["10.244.1.0/24"], &["192.0.2.2"]);
    // A route of someone else's in the same range of the table stays.
    node.ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.9",
        "proto",
        "static",
    ]);
    let mut daemon = node.start("node-a", &node.nodes_dir());
    let want = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(60, "remote node", || {
        (node.ns.weir_routes() == want && node.node_json().exists()).then_some(())
    });
    daemon.until(30, "the masquerade table", || node.ns.weir_nft_table());
    assert!(daemon.terminate());
    assert!(node.ns.weir_nft_table().is_some(), "SIGTERM keeps the rule");

    node.weir_ok(&["uninstall"]);
    assert!(!node.layout.root().exists(), "pins removed");
    assert!(node.ns.weir_routes().is_empty(), "weir's routes removed");
    assert!(!node.node_json().exists(), "node.json removed");
    assert_eq!(node.ns.weir_nft_table(), None, "masquerade table removed");
    assert!(
        node.ns
            .ip(&["route", "show", "198.51.100.0/24"])
            .contains("192.0.2.9"),
        "other routes stay"
    );
    node.weir_ok(&["uninstall"]);

    // Inspection says what is wrong instead of crashing.
    let out = node.weir(&["status"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Pins present       no"));
    let out = node.weir(&["bpf", "endpoints", "list"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pins are missing"));
}

#[test]
fn stale_endpoints_are_removed_at_start_and_counted() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    node.weir_ok(&["load"]);

    // One endpoint on a live interface (the uplink stands in for a pod's
    // veth), one on an interface that no longer exists.
    let live_ifindex = node.ns.ifindex("up1");
    let gone_ifindex = 0x7fff_0001;
    let live: IpAddr = "10.244.0.5".parse().unwrap();
    let gone: IpAddr = "10.244.0.6".parse().unwrap();
    let mut map = EndpointMap::open(&node.layout).unwrap();
    for (ip, ifindex) in [(live, live_ifindex), (gone, gone_ifindex)] {
        map.upsert(
            ip,
            Endpoint {
                ifindex,
                flags: ENDPOINT_F_READY,
                mac: [2, 0, 0, 0, 0, 1],
                host_mac: [2, 0, 0, 0, 0, 2],
            },
        )
        .unwrap();
    }
    let record = |host_ifname: &str, host_ifindex: u32, ip: IpAddr| EndpointInfo {
        container_id: format!("ctr-{host_ifname}"),
        ifname: "eth0".into(),
        host_ifname: host_ifname.into(),
        host_ifindex,
        netns: "/run/netns/none".into(),
        ips: vec![ip],
        mac: "02:00:00:00:00:01".into(),
        pod_namespace: Some("default".into()),
        pod_name: Some(format!("pod-{host_ifname}")),
    };
    record("up1", live_ifindex, live)
        .write(&node.endpoints_dir())
        .unwrap();
    record("wrgone", gone_ifindex, gone)
        .write(&node.endpoints_dir())
        .unwrap();
    fs::create_dir_all(node.layout.interface_links("wrgone")).unwrap();

    let table = node.weir_ok(&["bpf", "endpoints", "list"]);
    assert!(table.contains("default/pod-wrgone"), "{table}");

    let daemon = node.start("node-a", &node.nodes_dir());
    daemon.until(60, "the stale endpoint removed", || {
        let map = EndpointMap::open(&node.layout).ok()?;
        (map.get(gone).ok()?.is_none()).then_some(())
    });
    assert!(
        EndpointMap::open(&node.layout)
            .unwrap()
            .get(live)
            .unwrap()
            .is_some()
    );
    assert!(!node.layout.interface_links("wrgone").exists());
    assert!(!Path::new(&node.endpoints_dir().join("wrgone.json")).exists());
    assert!(node.endpoints_dir().join("up1.json").exists());
    let body = daemon
        .until(30, "metrics", || node.ns.http_get("/metrics"))
        .1;
    assert_eq!(
        metric(&body, "weir_stale_endpoints_removed_total").as_deref(),
        Some("1"),
        "{body}"
    );
    assert_eq!(
        metric(&body, "weir_stale_endpoint_records_removed_total").as_deref(),
        Some("1")
    );
    assert_eq!(
        metric(&body, "weir_map_entries{map=\"ENDPOINTS\"}").as_deref(),
        Some("1")
    );

    let json = node.weir_ok(&["bpf", "endpoints", "list", "-o", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["ip"], "10.244.0.5");
    assert_eq!(rows[0]["interface"], "up1");
    assert_eq!(rows[0]["pod"], "default/pod-up1");
    assert_eq!(rows[0]["mac"], "02:00:00:00:00:01");
}

/// Writes one endpoint's per-CPU counters (all on the first CPU) the way the
/// datapath would.
fn seed_counters(layout: &weir_datapath::PinLayout, ifindex: u32, traffic: Traffic, drops: u64) {
    use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
    let cpus = aya::util::nr_cpus().unwrap();
    let open =
        |name: &str| Map::from_map_data(MapData::from_pin(layout.map(name)).unwrap()).unwrap();
    let mut t: PerCpuHashMap<MapData, u32, Traffic> =
        open(weir_common::map_names::TRAFFIC).try_into().unwrap();
    let mut values = vec![Traffic::default(); cpus];
    values[0] = traffic;
    t.insert(ifindex, PerCpuValues::try_from(values).unwrap(), 0)
        .unwrap();
    let mut d: PerCpuHashMap<MapData, DropKey, u64> =
        open(weir_common::map_names::DROPS).try_into().unwrap();
    let mut values = vec![0u64; cpus];
    values[0] = drops;
    let key = DropKey {
        ifindex,
        reason: DropReason::SpoofedIp as u32,
    };
    d.insert(key, PerCpuValues::try_from(values).unwrap(), 0)
        .unwrap();
}

#[test]
fn counters_are_labelled_by_pod_and_hygiene_follows_interfaces_that_go_away() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    node.weir_ok(&["load"]);
    // A stand-in for a pod's host-side veth.
    node.ns.ip(&[
        "link", "add", "wrt0", "type", "veth", "peer", "name", "wrt0p",
    ]);
    let ifindex = node.ns.ifindex("wrt0");
    let ip: IpAddr = "10.244.0.7".parse().unwrap();
    EndpointMap::open(&node.layout)
        .unwrap()
        .upsert(
            ip,
            Endpoint {
                ifindex,
                flags: ENDPOINT_F_READY,
                mac: [2, 0, 0, 0, 0, 7],
                host_mac: [2, 0, 0, 0, 0, 8],
            },
        )
        .unwrap();
    EndpointInfo {
        container_id: "ctr-web".into(),
        ifname: "eth0".into(),
        host_ifname: "wrt0".into(),
        host_ifindex: ifindex,
        netns: "/run/netns/none".into(),
        ips: vec![ip],
        mac: "02:00:00:00:00:07".into(),
        pod_namespace: Some("shop".into()),
        pod_name: Some("web-0".into()),
    }
    .write(&node.endpoints_dir())
    .unwrap();
    seed_counters(
        &node.layout,
        ifindex,
        Traffic {
            from_pod_packets: 11,
            from_pod_bytes: 1100,
            to_pod_packets: 22,
            to_pod_bytes: 2200,
        },
        3,
    );

    let json = node.weir_ok(&["bpf", "counters", "list", "-o", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!(rows[0]["pod"], "shop/web-0");
    assert_eq!(rows[0]["interface"], "wrt0");
    assert_eq!(rows[0]["fromPodPackets"], 11);
    assert_eq!(rows[0]["toPodBytes"], 2200);
    assert_eq!(rows[0]["drops"]["spoofed_ip"], 3);
    let table = node.weir_ok(&["bpf", "counters", "list"]);
    assert!(table.contains("spoofed_ip=3"), "{table}");

    let daemon = node.start("node-a", &node.nodes_dir());
    let body = daemon
        .until(30, "metrics", || node.ns.http_get("/metrics"))
        .1;
    let labels =
        format!("namespace=\"shop\",pod=\"web-0\",interface=\"wrt0\",ifindex=\"{ifindex}\"");
    for (series, value) in [
        (
            format!("weir_endpoint_packets_total{{{labels},direction=\"from_pod\"}}"),
            "11",
        ),
        (
            format!("weir_endpoint_packets_total{{{labels},direction=\"to_pod\"}}"),
            "22",
        ),
        (
            format!("weir_endpoint_bytes_total{{{labels},direction=\"from_pod\"}}"),
            "1100",
        ),
        (
            format!("weir_endpoint_bytes_total{{{labels},direction=\"to_pod\"}}"),
            "2200",
        ),
        (
            format!("weir_drops_total{{{labels},reason=\"spoofed_ip\"}}"),
            "3",
        ),
    ] {
        assert_eq!(
            metric(&body, &format!("{series} ")).as_deref(),
            Some(value),
            "{series} in\n{body}"
        );
    }
    assert_eq!(
        metric(&body, "weir_stale_endpoints_removed_total").as_deref(),
        Some("0")
    );

    // The pod's interface disappears without a CNI DEL: the periodic sweep
    // removes its entry, record and counters.
    node.ns.ip(&["link", "del", "wrt0"]);
    daemon.until(60, "the periodic sweep", || {
        let map = EndpointMap::open(&node.layout).ok()?;
        (map.get(ip).ok()?.is_none()).then_some(())
    });
    assert!(!node.endpoints_dir().join("wrt0.json").exists());
    let json = node.weir_ok(&["bpf", "counters", "list", "-o", "json"]);
    assert_eq!(json.trim(), "[]");
    let body = node.ns.http_get("/metrics").unwrap().1;
    assert_eq!(
        metric(&body, "weir_stale_endpoints_removed_total").as_deref(),
        Some("1")
    );
    assert!(!body.contains("pod=\"web-0\""), "{body}");
}

#[test]
fn dual_stack_nodes_get_a_route_per_family() {
    let node = Node::new();
    node.ns
        .ip(&["-6", "addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"]);
    node.write_node(
        "a.yaml",
        "node-a",
        &["10.244.0.0/24", "fd00:10:244::/64"],
        &["192.0.2.1", "2001:db8::1"],
    );
    node.write_node(
        "b.yaml",
        "node-b",
        &["10.244.1.0/24", "fd00:10:244:1::/64"],
        &["2001:db8::2", "192.0.2.2"],
    );
    let daemon = node.start("node-a", &node.nodes_dir());
    let want = pairs(&[
        ("10.244.1.0/24", "192.0.2.2"),
        ("fd00:10:244:1::/64", "2001:db8::2"),
    ]);
    daemon.until(60, "both families", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    let info = NodeInfo::read(&node.node_json()).unwrap();
    assert_eq!(
        info.pod_cidrs,
        vec![
            "10.244.0.0/24".parse().unwrap(),
            "fd00:10:244::/64".parse().unwrap()
        ]
    );

    // node-b drops its IPv6 CIDR: only that route and entry go.
    node.write_node("b.yaml", "node-b", &["10.244.1.0/24"], &["192.0.2.2"]);
    let want = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(60, "the IPv6 entry removed", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
}

#[test]
fn a_route_that_cannot_be_added_is_counted_and_retried() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    // 198.18.0.5 is not on any link of the namespace: the kernel refuses it
    // as a gateway.
    node.write_node("b.yaml", "node-b", &["10.244.1.0/24"], &["198.18.0.5"]);
    let daemon = node.start("node-a", &node.nodes_dir());
    let want = pairs(&[("10.244.1.0/24", "198.18.0.5")]);
    // The map entry is written even though the route is not.
    daemon.until(60, "the NODES entry", || {
        (node.nodes_map().as_ref() == Some(&want)).then_some(())
    });
    daemon.until(30, "the reconcile error counted", || {
        let body = node.ns.http_get("/metrics")?.1;
        (metric(&body, "weir_reconcile_errors_total")? != "0").then_some(())
    });
    assert!(node.ns.weir_routes().is_empty());

    // The underlay gains the address: the next resync adds the route.
    node.ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "up0"]);
    daemon.until(60, "the route after a resync", || {
        (node.ns.weir_routes() == want).then_some(())
    });
}

#[test]
fn drift_in_the_map_or_the_routes_is_repaired_at_the_next_resync() {
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    node.write_node("b.yaml", "node-b", &["10.244.1.0/24"], &["192.0.2.2"]);
    let daemon = node.start("node-a", &node.nodes_dir());
    let want = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(60, "the remote node", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });

    // Someone removes the route and the entry, and adds a stray weir route.
    node.ns.ip(&["route", "del", "10.244.1.0/24"]);
    node.ns.ip(&[
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        "192.0.2.9",
        "proto",
        "87",
    ]);
    weir_datapath::maps::NodeMap::open(&node.layout)
        .unwrap()
        .remove("10.244.1.0".parse().unwrap(), 24)
        .unwrap();
    daemon.until(60, "the resync to repair the drift", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
}

#[test]
fn without_its_own_node_the_daemon_programs_remotes_but_is_not_ready() {
    let node = Node::new();
    node.write_node("b.yaml", "node-b", &["10.244.1.0/24"], &["192.0.2.2"]);
    let daemon = node.start("node-a", &node.nodes_dir());
    let want = pairs(&[("10.244.1.0/24", "192.0.2.2")]);
    daemon.until(60, "the remote node", || {
        (node.nodes_map().as_ref() == Some(&want) && node.ns.weir_routes() == want).then_some(())
    });
    assert_eq!(node.ns.http_get("/readyz").map(|r| r.0), Some(503));
    assert!(!node.node_json().exists());

    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    daemon.until(30, "readyz 200", || {
        (node.ns.http_get("/readyz")?.0 == 200).then_some(())
    });
    let info = NodeInfo::read(&node.node_json()).unwrap();
    assert_eq!(info.pod_cidrs, vec!["10.244.0.0/24".parse().unwrap()]);
}

#[test]
fn pins_of_another_abi_are_refused_with_what_to_do() {
    use aya::maps::{Array, Map, MapData};
    let node = Node::new();
    node.write_node("a.yaml", "node-a", &["10.244.0.0/24"], &["192.0.2.1"]);
    node.weir_ok(&["load"]);
    let path = node.layout.map(weir_common::map_names::META);
    let mut meta: Array<MapData, weir_common::Meta> =
        Map::from_map_data(MapData::from_pin(&path).unwrap())
            .unwrap()
            .try_into()
            .unwrap();
    let mut m = meta.get(&0, 0).unwrap();
    m.abi_version = weir_common::ABI_VERSION + 100;
    meta.set(0, m, 0).unwrap();

    let mut daemon = node.start("node-a", &node.nodes_dir());
    let status = common::wait_for(30, "weir-node to refuse", || {
        daemon.child.try_wait().unwrap()
    });
    assert!(!status.success());
    let log = daemon.log();
    assert!(log.contains("weir-node uninstall"), "{log}");
    // Nothing was touched.
    assert_eq!(
        EndpointMap::open(&node.layout)
            .map(|m| m.list().unwrap().len())
            .ok(),
        Some(0)
    );
    assert!(!node.node_json().exists());
}
