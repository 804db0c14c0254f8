//! The datapath end to end (issue 5): two nodes running the real weir-node,
//! pods made by the real weir binary, traffic between every pair, spoofing,
//! counters and metrics, and weir-node killed, restarted and upgraded under
//! traffic. Each test builds its own cluster (random names) and tears it
//! down even when it fails.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;
use weir_conformance::{
    cluster::{Cluster, ClusterOptions, Pod, ping},
    netns::NetNs,
};

fn cluster() -> Cluster {
    Cluster::new(ClusterOptions::default()).expect("cluster")
}

/// FNV-1a, enough to tell whether a stream arrived intact.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Starts a one-shot TCP sink in `pod` on `port`: it reads until EOF and
/// answers with the FNV hash of what it read.
fn sink(pod: &Pod, port: u16) -> thread::JoinHandle<Result<()>> {
    let path = pod.netns.path();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || -> Result<()> {
        let f = std::fs::File::open(&path)?;
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&f),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        ready_tx.send(()).ok();
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut data = Vec::new();
        s.read_to_end(&mut data)?;
        s.write_all(format!("{:016x}", fnv(&data)).as_bytes())?;
        Ok(())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("sink listening");
    handle
}

/// Sends `data` from `from` to `to:port` (paced over `pace` when given) and
/// checks the hash that comes back.
fn send_checked(
    from: &NetNs,
    to: IpAddr,
    port: u16,
    data: Vec<u8>,
    pace: Option<Duration>,
) -> Result<()> {
    let expect = format!("{:016x}", fnv(&data));
    from.run_in(move || -> Result<()> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let chunks = 50;
        let step = data.len().div_ceil(chunks);
        for chunk in data.chunks(step) {
            s.write_all(chunk)?;
            if let Some(p) = pace {
                thread::sleep(p / chunks as u32);
            }
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        anyhow::ensure!(answer == expect, "stream corrupted: {answer} != {expect}");
        Ok(())
    })?
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = weir_conformance::Rng::from_entropy();
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

#[test]
fn every_pod_reaches_every_pod_on_both_nodes_and_each_host_reaches_its_pods() {
    let c = cluster();
    let mut pods = Vec::new();
    for node in &c.nodes {
        for k in 0..2 {
            pods.push(node.add_pod(&format!("m{k}")).expect("ADD"));
        }
    }
    for a in &pods {
        for b in &pods {
            if a.container_id == b.container_id {
                continue;
            }
            assert_eq!(
                ping(&a.netns, b.ip, 3, "0.05").unwrap(),
                3,
                "{} -> {}",
                a.ip,
                b.ip
            );
        }
    }
    // A TCP transfer, checksummed, across nodes and on one node.
    for (a, b, port) in [(&pods[0], &pods[3], 7001), (&pods[0], &pods[1], 7002)] {
        let server = sink(b, port);
        send_checked(&a.netns, b.ip, port, random_bytes(1 << 20), None).expect("transfer");
        server.join().unwrap().expect("sink");
    }
    for pod in &pods {
        let node = &c.nodes[pod.node];
        assert_eq!(
            ping(&node.netns, pod.ip, 2, "0.05").unwrap(),
            2,
            "host {} -> pod {}",
            node.name,
            pod.ip
        );
    }
}

fn counters(node: &weir_conformance::cluster::ClusterNode) -> Vec<Value> {
    let out = node
        .weir_node(&["bpf", "counters", "list", "-o", "json"])
        .expect("counters");
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn counter_of<'a>(rows: &'a [Value], pod: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["pod"].as_str() == Some(pod))
        .unwrap_or_else(|| panic!("no counters for {pod}: {rows:?}"))
}

#[test]
fn spoofed_traffic_is_dropped_and_counters_and_metrics_match_what_was_sent() {
    let c = cluster();
    let node = &c.nodes[0];
    let a = node.add_pod("sa").unwrap();
    let b = node.add_pod("sb").unwrap();
    let before = counters(node);
    let sent_before = counter_of(&before, "default/pod-sa")["fromPodPackets"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(ping(&a.netns, b.ip, 20, "0.02").unwrap(), 20);
    let after = counters(node);
    let ca = counter_of(&after, "default/pod-sa");
    let cb = counter_of(&after, "default/pod-sb");
    let sent = ca["fromPodPackets"].as_u64().unwrap() - sent_before;
    assert!(
        (20..=30).contains(&sent),
        "a sent 20 echo requests (+ little else): {sent}"
    );
    assert!(cb["toPodPackets"].as_u64().unwrap() >= 20, "{cb}");

    a.netns
        .ip(&["addr", "add", "10.200.0.250/32", "dev", "eth0"])
        .unwrap();
    let out = a
        .netns
        .command("ping")
        .unwrap()
        .args(["-c", "3", "-i", "0.05", "-W", "1", "-I", "10.200.0.250"])
        .arg(b.ip.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success(), "spoofed pings must go unanswered");
    let after = counters(node);
    let drops = counter_of(&after, "default/pod-sa")["drops"]["spoofed_ip"]
        .as_u64()
        .unwrap_or(0);
    assert!(drops >= 3, "spoof drops counted: {after:?}");

    let (status, metrics) = node.http_get("/metrics").unwrap();
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("weir_drops_total{")
                && l.contains("pod=\"pod-sa\"")
                && l.contains("reason=\"spoofed_ip\"")
        })
        .unwrap_or_else(|| panic!("no spoof drop metric: {metrics}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3, "{line}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_endpoint_packets_total{")
                && l.contains("namespace=\"default\",pod=\"pod-sb\"")),
        "{metrics}"
    );
}

/// Starts a 100-per-second ping that runs `seconds`; returns its summary.
fn background_ping(from: &NetNs, to: IpAddr, seconds: u32) -> thread::JoinHandle<(u32, u32)> {
    let path = from.path();
    let count = seconds * 100;
    thread::spawn(move || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                path.file_name().unwrap().to_str().unwrap(),
                "ping",
                "-n",
                "-q",
                "-i",
                "0.01",
                "-W",
                "1",
            ])
            .arg("-c")
            .arg(count.to_string())
            .arg(to.to_string())
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_default()
            .to_string();
        let mut nums = line.split(',').map(|p| {
            p.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        });
        (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
    })
}

#[test]
fn killing_and_restarting_weir_node_under_traffic_loses_nothing() {
    let mut c = cluster();
    let a = c.nodes[0].add_pod("ka").unwrap();
    let b = c.nodes[1].add_pod("kb").unwrap();
    let pings_ab = background_ping(&a.netns, b.ip, 6);
    let pings_ba = background_ping(&b.netns, a.ip, 6);
    let server = sink(&b, 7100);
    let bip = b.ip;
    let stream = {
        let from = a.netns.path();
        thread::spawn(move || {
            let f = std::fs::File::open(&from).unwrap();
            nix::sched::setns(
                std::os::fd::AsFd::as_fd(&f),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .unwrap();
            let data = random_bytes(8 << 20);
            let expect = format!("{:016x}", fnv(&data));
            let mut s =
                TcpStream::connect_timeout(&SocketAddr::new(bip, 7100), Duration::from_secs(5))
                    .unwrap();
            for chunk in data.chunks(data.len() / 100) {
                s.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(40));
            }
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            answer == expect
        })
    };
    thread::sleep(Duration::from_secs(1));
    for node in &mut c.nodes {
        node.kill_daemon().unwrap();
    }
    // New pods work while the daemons are down: the CNI needs only the pins.
    let d0 = c.nodes[0].add_pod("kd0").unwrap();
    let d1 = c.nodes[1].add_pod("kd1").unwrap();
    assert_eq!(
        ping(&d0.netns, d1.ip, 3, "0.05").unwrap(),
        3,
        "pods made while weir-node is down"
    );
    thread::sleep(Duration::from_millis(500));
    for node in &mut c.nodes {
        node.start_daemon().unwrap();
    }
    let (sent, received) = pings_ab.join().unwrap();
    assert!(
        sent >= 500 && received == sent,
        "a -> b lost pings: {received}/{sent}"
    );
    let (sent, received) = pings_ba.join().unwrap();
    assert!(
        sent >= 500 && received == sent,
        "b -> a lost pings: {received}/{sent}"
    );
    assert!(stream.join().unwrap(), "the stream completed intact");
    server.join().unwrap().unwrap();
}

#[test]
fn upgrading_the_programs_under_traffic_loses_no_ping() {
    let c = cluster();
    let a = c.nodes[0].add_pod("ua").unwrap();
    let b = c.nodes[1].add_pod("ub").unwrap();
    let a2 = c.nodes[0].add_pod("ua2").unwrap();
    let pings = background_ping(&a.netns, b.ip, 4);
    let local = background_ping(&a2.netns, a.ip, 4);
    thread::sleep(Duration::from_millis(800));
    for node in &c.nodes {
        let before = node.weir_node(&["status", "-o", "json"]).unwrap();
        node.weir_node(&["load"])
            .expect("load over the running datapath");
        let after = node.weir_node(&["status", "-o", "json"]).unwrap();
        assert_ne!(before, after, "new programs were loaded on {}", node.name);
    }
    let (sent, received) = pings.join().unwrap();
    assert!(
        sent >= 300 && received == sent,
        "cross-node pings lost during upgrade: {received}/{sent}"
    );
    let (sent, received) = local.join().unwrap();
    assert!(
        sent >= 300 && received == sent,
        "same-node pings lost during upgrade: {received}/{sent}"
    );
}

#[test]
fn an_endpoint_whose_pod_vanished_without_del_is_removed_at_restart() {
    let mut c = cluster();
    let gone = c.nodes[0].add_pod("ga").unwrap();
    let kept = c.nodes[0].add_pod("gb").unwrap();
    let gone_ip = gone.ip;
    drop(gone); // the namespace goes, taking the veth with it; no DEL
    c.nodes[0].kill_daemon().unwrap();
    c.nodes[0].start_daemon().unwrap();
    let mut listed = String::new();
    for _ in 0..50 {
        listed = c.nodes[0]
            .weir_node(&["bpf", "endpoints", "list", "-o", "json"])
            .unwrap();
        if !listed.contains(&format!("\"{gone_ip}\"")) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !listed.contains(&format!("\"{gone_ip}\"")),
        "stale entry removed: {listed}"
    );
    assert!(
        listed.contains(&format!("\"{}\"", kept.ip)),
        "live entry kept: {listed}"
    );
    let (_, metrics) = c.nodes[0].http_get("/metrics").unwrap();
    let stale = metrics
        .lines()
        .find(|l| l.starts_with("weir_stale_endpoints_removed_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .context("stale metric")
        .unwrap();
    assert!(stale >= 1, "the cleanup is counted");
}
