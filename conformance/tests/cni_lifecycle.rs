//! The CNI protocol against the real `weir` binary, for every supported
//! version: ADD → CHECK → DEL → DEL, each result checked against its
//! version's schema and every interface, address, route and neighbour checked
//! inside the namespaces; plus the runtime habits (podman's VERSION, CRI
//! args, /proc/<pid>/ns/net, empty netns on DEL), STATUS and GC. Runs as
//! root; each test owns its node namespace, pin directory and state.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use weir_conformance::{
    cni::{self, Invocation},
    netns::NetNs,
    node::{NodeOptions, TestNode},
};
use weir_datapath::{endpoint_info::EndpointInfo, maps::EndpointMap};

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn mac_ok(s: &str) -> bool {
    s.len() == 17
        && s.split(':')
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Checks `r` against the result schema of `version`, for a dual-stack pod
/// on `ifname` in `netns`. Returns (host ifname, host mac, pod mac, ips).
fn check_result_schema(
    r: &Value,
    version: &str,
    ifname: &str,
    netns: &str,
) -> Result<(String, String, String, Vec<IpAddr>)> {
    let obj = r.as_object().context("result is an object")?;
    for k in obj.keys() {
        ensure!(
            ["cniVersion", "interfaces", "ips", "routes", "dns"].contains(&k.as_str()),
            "unexpected key {k} in {r}"
        );
    }
    ensure!(r["cniVersion"] == version, "cniVersion of {r}");
    let ifs = r["interfaces"].as_array().context("interfaces")?;
    ensure!(ifs.len() == 2, "two interfaces in {r}");
    let host = &ifs[0];
    let pod = &ifs[1];
    let host_name = host["name"].as_str().context("host name")?.to_owned();
    ensure!(
        host_name.starts_with("wr") && host_name.len() == 15,
        "host name {host_name}"
    );
    ensure!(
        host.get("sandbox").is_none(),
        "host interface has no sandbox"
    );
    ensure!(pod["name"] == ifname, "pod interface name");
    ensure!(pod["sandbox"] == netns, "pod sandbox {pod}");
    let host_mac = host["mac"].as_str().context("host mac")?.to_owned();
    let pod_mac = pod["mac"].as_str().context("pod mac")?.to_owned();
    ensure!(
        mac_ok(&host_mac) && mac_ok(&pod_mac),
        "macs {host_mac} {pod_mac}"
    );
    for i in ifs {
        if version == "1.1.0" {
            ensure!(i["mtu"] == 1500, "1.1.0 interfaces carry mtu: {i}");
        } else {
            ensure!(
                i.get("mtu").is_none(),
                "{version} has no interface mtu: {i}"
            );
        }
    }
    let ips = r["ips"].as_array().context("ips")?;
    ensure!(ips.len() == 2, "one address per family: {r}");
    let mut addrs = Vec::new();
    for ip in ips {
        let a: ipnetwork::IpNetwork = ip["address"]
            .as_str()
            .context("address")?
            .parse()
            .context("address is a CIDR")?;
        let (family, gw, prefix) = if a.is_ipv4() {
            ("4", "169.254.1.1", 32)
        } else {
            ("6", "fe80::1", 128)
        };
        ensure!(a.prefix() == prefix, "host prefix: {a}");
        ensure!(ip["gateway"] == gw, "gateway {ip}");
        ensure!(ip["interface"] == 1, "ips name the pod interface: {ip}");
        if version.starts_with("0.") {
            ensure!(ip["version"] == family, "{version} ips carry version: {ip}");
        } else {
            ensure!(
                ip.get("version").is_none(),
                "{version} ips carry no version: {ip}"
            );
        }
        addrs.push(a.ip());
    }
    ensure!(
        addrs[0].to_string().starts_with("10.77.0.")
            && addrs[1].to_string().starts_with("fd00:77::"),
        "addresses from the node's pod CIDRs: {addrs:?}"
    );
    let routes = r["routes"].as_array().context("routes")?;
    ensure!(
        routes.contains(&json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}))
            && routes.contains(&json!({"dst": "::/0", "gw": "fe80::1"})),
        "default routes in {r}"
    );
    ensure!(r["dns"].is_object(), "dns object");
    Ok((host_name, host_mac, pod_mac, addrs))
}

/// Everything ADD made, checked in the namespaces, the map and the records.
fn check_plumbing(
    node: &TestNode,
    pod: &NetNs,
    ifname: &str,
    host: &str,
    host_mac: &str,
    pod_mac: &str,
    ips: &[IpAddr],
) -> Result<()> {
    let link = pod.link(ifname)?;
    ensure!(link["address"] == pod_mac, "pod mac {link}");
    ensure!(link["mtu"] == 1500, "pod mtu {link}");
    ensure!(
        link["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("UP"))),
        "pod link up: {link}"
    );
    let addrs = pod.addresses(ifname)?;
    for ip in ips {
        let want = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
        ensure!(addrs.contains(&want), "{want} on {ifname}: {addrs:?}");
    }
    let v4 = pod.routes("-4")?;
    ensure!(
        v4.iter().any(|r| r["dst"] == "default"
            && r["gateway"] == "169.254.1.1"
            && r["dev"] == ifname
            && r["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&json!("onlink")))),
        "v4 default route: {v4:?}"
    );
    let v6 = pod.routes("-6")?;
    ensure!(
        v6.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "fe80::1" && r["dev"] == ifname),
        "v6 default route: {v6:?}"
    );
    let neigh = pod.neighbours(ifname)?;
    for gw in ["169.254.1.1", "fe80::1"] {
        ensure!(
            neigh.iter().any(|n| n["dst"] == gw
                && n["lladdr"] == host_mac
                && n["state"]
                    .as_array()
                    .is_some_and(|s| s.contains(&json!("PERMANENT")))),
            "permanent neighbour {gw} -> {host_mac}: {neigh:?}"
        );
    }
    ensure!(
        pod.sysctl(&format!("net.ipv6.conf.{ifname}.accept_dad"))? == "0",
        "DAD disabled on {ifname}"
    );

    let hl = node.netns.link(host)?;
    ensure!(hl["address"] == host_mac, "host mac {hl}");
    ensure!(
        hl["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("UP"))),
        "host link up: {hl}"
    );
    let host_index = hl["ifindex"].as_u64().context("ifindex")? as u32;
    let hv4 = node.netns.routes("-4")?;
    ensure!(
        hv4.iter()
            .any(|r| r["dst"] == ips[0].to_string() && r["dev"] == host),
        "host route to {}: {hv4:?}",
        ips[0]
    );
    let hv6 = node.netns.routes("-6")?;
    ensure!(
        hv6.iter()
            .any(|r| r["dst"] == ips[1].to_string() && r["dev"] == host),
        "host route to {}: {hv6:?}",
        ips[1]
    );

    let layout = node.layout.clone();
    let host_owned = host.to_owned();
    let attached = node
        .netns
        .run_in(move || weir_datapath::attach::is_attached(&layout, &host_owned))??;
    ensure!(attached, "weir's programs are attached to {host}");
    let map = EndpointMap::open(&node.layout)?;
    for ip in ips {
        let ep = map
            .get(*ip)?
            .with_context(|| format!("endpoint entry {ip}"))?;
        ensure!(ep.ifindex == host_index, "entry ifindex {}", ep.ifindex);
        let mac: Vec<String> = ep.mac.iter().map(|b| format!("{b:02x}")).collect();
        ensure!(mac.join(":") == pod_mac, "entry mac");
        let hmac: Vec<String> = ep.host_mac.iter().map(|b| format!("{b:02x}")).collect();
        ensure!(hmac.join(":") == host_mac, "entry host mac");
        ensure!(ep.flags & weir_common::ENDPOINT_F_READY != 0, "entry ready");
    }
    let record = EndpointInfo::read(&node.endpoints_dir(), host)?.context("endpoint record")?;
    ensure!(record.ips == ips, "record ips {:?}", record.ips);
    ensure!(
        record.pod_namespace.as_deref() == Some("default"),
        "record pod namespace"
    );
    ensure!(
        record.pod_name.as_deref() == Some("web-0"),
        "record pod name"
    );
    let held = node.ipam()?.list()?;
    ensure!(held.len() == 1, "one reservation: {held:?}");
    Ok(())
}

fn lifecycle(version: &str) -> Result<()> {
    let node = TestNode::new(NodeOptions::default())?;
    let pod = node.pod_netns("p")?;
    let netns = pod.path().to_string_lossy().into_owned();
    let cid = node.container_id("c");
    let mut inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config(version));
    inv.args = cni::kubernetes_args("default", "web-0", &cid);

    let result = node
        .weir(&inv)?
        .ok()
        .context("ADD")?
        .context("ADD prints a result")?;
    let (host, host_mac, pod_mac, ips) = check_result_schema(&result, version, "eth0", &netns)
        .with_context(|| format!("result of {version}: {result}"))?;
    check_plumbing(&node, &pod, "eth0", &host, &host_mac, &pod_mac, &ips)?;

    let mut conf = node.config(version);
    conf["prevResult"] = result.clone();
    let mut check = inv.clone();
    check.command = "CHECK".into();
    check.config = conf.clone();
    let out = node.weir(&check)?;
    if version.starts_with("0.3") {
        ensure!(out.code() == Some(1), "CHECK refused below 0.4.0: {out:?}");
    } else {
        ensure!(out.success, "CHECK: {out:?}");
        ensure!(out.stdout.trim().is_empty(), "CHECK prints nothing");
    }

    let mut del = inv.clone();
    del.command = "DEL".into();
    del.config = conf;
    let out = node.weir(&del)?;
    ensure!(out.success && out.stdout.trim().is_empty(), "DEL: {out:?}");
    ensure!(
        node.leftovers()?.is_empty(),
        "after DEL: {:?}",
        node.leftovers()?
    );
    ensure!(pod.link_names()? == ["lo"], "pod keeps only lo");
    // The CRI's second DEL: no netns, no prevResult.
    del.netns = String::new();
    del.config = node.config(version);
    let out = node.weir(&del)?;
    ensure!(out.success, "second DEL: {out:?}");
    ensure!(node.leftovers()?.is_empty(), "after the second DEL");

    let log = std::fs::read_to_string(node.log_file())?;
    let lines: Vec<Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("log lines are JSON")?;
    ensure!(lines.len() >= 4, "one line per invocation: {log}");
    for l in &lines {
        ensure!(
            l["verb"].is_string() && l["durationUs"].is_u64() && l["outcome"].is_string(),
            "log line fields: {l}"
        );
    }
    ensure!(lines[0]["verb"] == "ADD" && lines[0]["containerId"] == cid.as_str());
    eprintln!("{version} ADD: {}", lines[0]);
    Ok(())
}

#[test]
fn add_check_del_del_for_every_version() {
    for version in VERSIONS {
        lifecycle(version).unwrap_or_else(|e| panic!("cniVersion {version}: {e:#}"));
    }
}

#[test]
fn podman_version_probe_with_dummy_environment() {
    let node = TestNode::new(NodeOptions {
        load_datapath: false,
        ..NodeOptions::default()
    })
    .expect("node");
    let mut inv = Invocation::new(
        "VERSION",
        "",
        "dummy",
        "dummy",
        json!({"cniVersion": "1.0.0"}),
    );
    inv.path = "dummy".into();
    inv.env.push((
        "WEIR_LOG_FILE".into(),
        node.log_file().to_string_lossy().into_owned(),
    ));
    let out = node.weir(&inv).expect("run");
    assert!(out.success, "{out:?}");
    let v = out.json.expect("json");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let log = std::fs::read_to_string(node.log_file()).expect("log");
    assert!(log.contains(r#""verb":"VERSION""#), "{log}");
}

#[test]
fn proc_pid_netns_path_and_clsact_mode_and_del_without_netns() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("q").expect("pod");
    // A process holding the pod's namespace, as a runtime's pause container.
    let mut holder = pod
        .command("sleep")
        .expect("cmd")
        .arg("60")
        .spawn()
        .expect("spawn holder");
    let netns = format!("/proc/{}/ns/net", holder.id());
    let cid = node.container_id("proc");
    let mut conf = node.config("1.0.0");
    conf["attachMode"] = json!("clsact");
    let mut inv = Invocation::new("ADD", &cid, &netns, "net1", conf.clone());
    inv.args = cni::kubernetes_args("default", "web-0", &cid);
    let result = node
        .weir(&inv)
        .expect("run")
        .ok()
        .expect("ADD")
        .expect("result");
    let (host, host_mac, pod_mac, ips) =
        check_result_schema(&result, "1.0.0", "net1", &netns).expect("schema");
    check_plumbing(&node, &pod, "net1", &host, &host_mac, &pod_mac, &ips).expect("plumbing");
    assert!(
        node.layout.interface_links(&host).join("clsact").exists(),
        "attached in clsact mode"
    );
    let mut check = inv.clone();
    check.command = "CHECK".into();
    check.config["prevResult"] = result.clone();
    let out = node.weir(&check).expect("run");
    assert!(out.success, "CHECK: {out:?}");

    // containerd's ctr: DEL with an empty CNI_NETNS and no prevResult.
    let mut del = inv.clone();
    del.command = "DEL".into();
    del.netns = String::new();
    let out = node.weir(&del).expect("run");
    assert!(out.success, "{out:?}");
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn check_names_what_is_wrong() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("k").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let cid = node.container_id("k");
    let inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.1.0"));
    let result = node
        .weir(&inv)
        .expect("run")
        .ok()
        .expect("ADD")
        .expect("result");
    let mut check = inv.clone();
    check.command = "CHECK".into();
    check.config["prevResult"] = result.clone();

    // The route the pod needs goes missing.
    pod.ip(&["-4", "route", "del", "default"])
        .expect("del route");
    let out = node.weir(&check).expect("run");
    assert_eq!(out.code(), Some(102), "{out:?}");
    assert!(out.stdout.contains("default route"), "{}", out.stdout);

    // An address goes missing.
    let v4 = result["ips"][0]["address"].as_str().unwrap();
    pod.ip(&["addr", "del", v4, "dev", "eth0"])
        .expect("del addr");
    let out = node.weir(&check).expect("run");
    assert_eq!(out.code(), Some(102), "{out:?}");
    assert!(out.stdout.contains("lacks the address"), "{}", out.stdout);

    let mut del = inv.clone();
    del.command = "DEL".into();
    assert!(node.weir(&del).expect("run").success);
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
}

#[test]
fn adding_the_same_attachment_twice_names_the_interface_and_changes_nothing() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("d").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let cid = node.container_id("d");
    let inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.0.0"));
    let first = node
        .weir(&inv)
        .expect("run")
        .ok()
        .expect("ADD")
        .expect("result");
    let before = node.leftovers().expect("state");
    let out = node.weir(&inv).expect("run");
    assert_eq!(out.code(), Some(101), "{out:?}");
    let host = first["interfaces"][0]["name"].as_str().unwrap();
    assert!(out.stdout.contains(host), "names {host}: {}", out.stdout);
    assert_eq!(node.leftovers().expect("state"), before, "nothing changed");
    let mut del = inv.clone();
    del.command = "DEL".into();
    assert!(node.weir(&del).expect("run").success);
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
}

#[test]
fn status_reports_ready_then_50_without_pins_or_node_info_or_addresses() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let status = |conf: Value| {
        node.weir(&Invocation::new("STATUS", "", "", "", conf))
            .expect("run")
    };
    let out = status(node.config("1.1.0"));
    assert!(out.success, "{out:?}");
    let out = status(node.config("1.0.0"));
    assert_eq!(out.code(), Some(1), "STATUS needs 1.1.0: {out:?}");

    // An exhausted pool: a /30 range has two addresses.
    let pod = node.pod_netns("s").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let mut small = node.config("1.1.0");
    small["name"] = json!("small");
    small["ipam"] = json!({"ranges": [[{"subnet": "10.99.0.0/30"}]]});
    for i in 0..2 {
        let inv = Invocation::new(
            "ADD",
            &node.container_id(&format!("s{i}")),
            &netns,
            &format!("eth{i}"),
            small.clone(),
        );
        node.weir(&inv).expect("run").ok().expect("ADD");
    }
    let out = status(small.clone());
    assert_eq!(out.code(), Some(50), "{out:?}");
    assert!(
        out.stdout.contains("exhausted") && out.stdout.contains("2 of 2 allocated"),
        "{}",
        out.stdout
    );
    let inv = Invocation::new(
        "ADD",
        &node.container_id("s9"),
        &netns,
        "eth9",
        small.clone(),
    );
    let out = node.weir(&inv).expect("run");
    assert_eq!(out.code(), Some(100), "exhausted ADD: {out:?}");
    assert!(out.stdout.contains("2 of 2"), "{}", out.stdout);

    std::fs::remove_file(node.node_info_path()).expect("rm node.json");
    let out = status(node.config("1.1.0"));
    assert_eq!(out.code(), Some(50), "{out:?}");
    assert!(out.stdout.contains("node.json"), "{}", out.stdout);

    weir_datapath::loader::unpin_all(&node.layout).expect("unpin");
    let out = status(small.clone());
    assert_eq!(out.code(), Some(50), "{out:?}");
    let gc = cni::gc_config(&small, &[]);
    assert!(
        node.weir(&Invocation::new("GC", "", "", "", gc))
            .expect("run")
            .success
    );
}

#[test]
fn gc_removes_everything_not_listed_and_keeps_what_is() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("g").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let mut results = Vec::new();
    for i in 0..3 {
        let cid = node.container_id(&format!("g{i}"));
        let inv = Invocation::new(
            "ADD",
            &cid,
            &netns,
            &format!("eth{i}"),
            node.config("1.1.0"),
        );
        results.push((
            cid,
            node.weir(&inv)
                .expect("run")
                .ok()
                .expect("ADD")
                .expect("result"),
        ));
    }
    let keep = (results[1].0.as_str(), "eth1");
    let out = node.gc(&[keep]).expect("run");
    assert!(out.success, "{out:?}");
    let left = node.leftovers().expect("leftovers");
    let kept_host = results[1].1["interfaces"][0]["name"].as_str().unwrap();
    assert!(
        left.iter().all(|l| l.contains(kept_host)
            || l.contains(&results[1].0)
            || l.starts_with("endpoint entry")),
        "only the kept attachment remains: {left:?}"
    );
    assert_eq!(pod.link_names().expect("links"), ["lo", "eth1"]);
    // The older key is accepted too.
    let mut conf = node.config("1.1.0");
    conf["cni.dev/attachments"] = json!([]);
    let out = node
        .weir(&Invocation::new("GC", "", "", "", conf))
        .expect("run");
    assert!(out.success, "{out:?}");
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
}

#[test]
fn del_succeeds_when_the_pins_and_the_netns_are_gone() {
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("m").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let cid = node.container_id("m");
    let inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.0.0"));
    let result = node
        .weir(&inv)
        .expect("run")
        .ok()
        .expect("ADD")
        .expect("result");
    // weir-node uninstalled (pins and node.json gone) and the pod's
    // namespace removed before DEL.
    weir_datapath::loader::unpin_all(&node.layout).expect("unpin");
    let node_json = std::fs::read(node.node_info_path()).expect("node.json");
    std::fs::remove_file(node.node_info_path()).expect("rm node.json");
    drop(pod);
    let mut del = inv.clone();
    del.command = "DEL".into();
    del.config["prevResult"] = result;
    for _ in 0..3 {
        let out = node.weir(&del).expect("run");
        assert!(out.success, "{out:?}");
    }
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
    std::fs::write(node.node_info_path(), node_json).expect("restore node.json");
    // Without pins, ADD is "try again later" and leaves nothing.
    let pod = node.pod_netns("m2").expect("pod");
    let mut add = inv.clone();
    add.netns = pod.path().to_string_lossy().into_owned();
    let out = node.weir(&add).expect("run");
    assert_eq!(out.code(), Some(11), "{out:?}");
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
    assert_eq!(pod.link_names().expect("links"), ["lo"]);
}
