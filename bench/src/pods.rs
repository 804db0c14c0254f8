//! Figure 4: pod-to-pod TCP throughput (iperf3) and request/response
//! latency, weir beside pods made by Debian's `bridge` plugin and a bare
//! veth pair between two namespaces (the floor) on one node, and weir across
//! two nodes beside the bare underlay. Systems are interleaved per
//! repetition.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weir_conformance::{
    cluster::{Cluster, ClusterOptions},
    cni::{self, DEBIAN_PLUGIN_DIR, Invocation},
    netns::NetNs,
    random_hex,
};

#[derive(Clone, Debug)]
pub struct Sample {
    /// "same node" or "across nodes".
    pub path: &'static str,
    pub system: &'static str,
    /// "throughput" (bits/s) or "rr" (seconds per round trip).
    pub metric: &'static str,
    pub value: f64,
}

/// A pair of endpoints to measure between.
struct Pair<'a> {
    client: &'a NetNs,
    server: &'a NetNs,
    server_ip: IpAddr,
}

/// Runs iperf3 between the pair for `seconds`; bits per second received.
fn iperf(pair: &Pair<'_>, seconds: u32) -> Result<f64> {
    let mut server: Child = pair
        .server
        .command("iperf3")?
        .args(["-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    // Wait for the listener (without connecting: -1 serves one client).
    let mut up = false;
    for _ in 0..200 {
        let ss = pair
            .server
            .command("ss")?
            .args(["-ltnH", "sport = :5201"])
            .output()?;
        if !String::from_utf8_lossy(&ss.stdout).trim().is_empty() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !up {
        let _ = server.kill();
        let _ = server.wait();
        bail!("iperf3 server on {} did not start", pair.server_ip);
    }
    let out = pair
        .client
        .command("iperf3")?
        .args([
            "-c",
            &pair.server_ip.to_string(),
            "-p",
            "5201",
            "-J",
            "-t",
            &seconds.to_string(),
        ])
        .output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout)))
}

/// `n` one-byte request/response round trips on one TCP connection; the
/// seconds of each.
fn rr(pair: &Pair<'_>, n: usize) -> Result<Vec<f64>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let server_path = pair.server.path();
    let server = std::thread::spawn(move || -> Result<()> {
        let f = std::fs::File::open(&server_path)?;
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&f),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        let l = TcpListener::bind(("0.0.0.0", 5202))?;
        tx.send(()).ok();
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b)?;
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("rr server")?;
    let addr = SocketAddr::new(pair.server_ip, 5202);
    let times = pair.client.run_in(move || -> Result<Vec<f64>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        let mut b = [7u8; 1];
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(&b)?;
            s.read_exact(&mut b)?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(times)
    })??;
    let _ = server.join();
    Ok(times)
}

/// Two namespaces joined by a bare veth pair (10.99.0.1 -> .2): the floor.
fn bare_veth() -> Result<(NetNs, NetNs)> {
    let id = random_hex(6);
    let a = NetNs::new(&format!("wbva{id}"))?;
    let b = NetNs::new(&format!("wbvb{id}"))?;
    a.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        b.name(),
    ])?;
    a.ip(&["addr", "add", "10.99.0.1/24", "dev", "eth0"])?;
    b.ip(&["addr", "add", "10.99.0.2/24", "dev", "eth0"])?;
    a.ip(&["link", "set", "eth0", "up"])?;
    b.ip(&["link", "set", "eth0", "up"])?;
    Ok((a, b))
}

/// Two pods made by Debian's bridge plugin on one node: (client, server,
/// server address, node namespace, state directory).
fn bridge_pods() -> Result<(NetNs, NetNs, IpAddr, NetNs, std::path::PathBuf)> {
    let id = random_hex(6);
    let node = NetNs::new(&format!("wbbn{id}"))?;
    let dir = std::env::temp_dir().join(format!("weir-bench-br-{id}"));
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "benchbr",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.98.0.0/24"}]], "dataDir": dir},
    });
    let mut pods = Vec::new();
    let mut ips = Vec::new();
    for k in 0..2 {
        let pod = NetNs::new(&format!("wbbp{id}{k}"))?;
        let inv = Invocation::new(
            "ADD",
            &format!("br{id}{k}"),
            &pod.path().display().to_string(),
            "eth0",
            config.clone(),
        );
        let result = cni::invoke(
            &std::path::PathBuf::from(DEBIAN_PLUGIN_DIR).join("bridge"),
            &inv,
            Some(&node),
        )?
        .ok()?
        .context("bridge ADD result")?;
        let ip: IpAddr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("bridge address")?
            .parse()?;
        pods.push(pod);
        ips.push(ip);
    }
    let server = pods.pop().context("pod")?;
    let client = pods.pop().context("pod")?;
    Ok((client, server, ips[1], node, dir))
}

/// Runs figure 4: `reps` repetitions of `seconds`-long iperf3 runs and `rr`
/// round trips per system.
pub fn run(reps: usize, seconds: u32, rr_count: usize) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    let cluster = Cluster::new(ClusterOptions::default())?;
    let a = cluster.nodes[0].add_pod("ba")?;
    let b = cluster.nodes[0].add_pod("bb")?;
    let c = cluster.nodes[1].add_pod("bc")?;
    let (br_client, br_server, br_ip, _br_node, bridge_dir) = bridge_pods()?;
    let (veth_a, veth_b) = bare_veth()?;
    let weir_same = Pair {
        client: &a.netns,
        server: &b.netns,
        server_ip: b.ip,
    };
    let weir_cross = Pair {
        client: &a.netns,
        server: &c.netns,
        server_ip: c.ip,
    };
    let bridge = Pair {
        client: &br_client,
        server: &br_server,
        server_ip: br_ip,
    };
    let veth = Pair {
        client: &veth_a,
        server: &veth_b,
        server_ip: "10.99.0.2".parse()?,
    };
    let underlay = Pair {
        client: &cluster.nodes[0].netns,
        server: &cluster.nodes[1].netns,
        server_ip: IpAddr::V4(cluster.nodes[1].ip),
    };
    let systems: [(&str, &str, &Pair<'_>); 5] = [
        ("same node", "weir", &weir_same),
        ("same node", "bridge", &bridge),
        ("same node", "bare veth", &veth),
        ("across nodes", "weir", &weir_cross),
        ("across nodes", "bare underlay", &underlay),
    ];
    for rep in 0..reps {
        for k in 0..systems.len() {
            let (path, system, pair) = systems[(k + rep) % systems.len()];
            eprintln!("  pods: {path} {system} rep {}/{reps}", rep + 1);
            out.push(Sample {
                path,
                system,
                metric: "throughput",
                value: iperf(pair, seconds)?,
            });
            for t in rr(pair, rr_count)? {
                out.push(Sample {
                    path,
                    system,
                    metric: "rr",
                    value: t,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(bridge_dir);
    Ok(out)
}
