//! Figure 3: connection latency (connect, one small request and its answer,
//! close) to the *last* of N services, weir beside kube-proxy's iptables
//! layout (iptables-nft, Debian's default backend), interleaved. weir's
//! client and backend are pods made by the weir binary on a test node whose
//! service maps hold N services; the iptables client and backend are
//! namespaces routed through a node namespace holding the N services'
//! rules.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use weir_conformance::{
    cni::Invocation,
    netns::NetNs,
    node::{NodeOptions, TestNode},
    random_hex,
};
use weir_datapath::services::{BackendAddr, Frontend, ServiceMaps, ServiceSpec};

use crate::services::{BACKENDS_PER_SERVICE, iptables_rules};

#[derive(Clone, Debug)]
pub struct Sample {
    pub system: &'static str,
    pub services: usize,
    pub seconds: f64,
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i >> 8) as u8, i as u8)
}

/// Answers every connection on 8080 with one byte, until dropped. The
/// accept blocks (no polling delay in what is measured); dropping wakes it
/// with a connection of its own.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    netns: std::path::PathBuf,
}

impl Echo {
    fn start(ns: &NetNs) -> Result<Echo> {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let setup = (|| -> Result<TcpListener> {
                let f = std::fs::File::open(&path)?;
                nix::sched::setns(
                    std::os::fd::AsFd::as_fd(&f),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )?;
                Ok(TcpListener::bind("0.0.0.0:8080")?)
            })();
            let l = match setup {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((mut s, _)) = l.accept() {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).is_ok() {
                        let _ = s.write_all(&b);
                    }
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("echo server")??;
        Ok(Echo {
            stop,
            thread: Some(thread),
            netns: ns.path(),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let path = self.netns.clone();
        let _ = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).ok()?;
            nix::sched::setns(
                std::os::fd::AsFd::as_fd(&f),
                nix::sched::CloneFlags::CLONE_NEWNET,
            )
            .ok()?;
            let mut s =
                TcpStream::connect_timeout(&"127.0.0.1:8080".parse().ok()?, Duration::from_secs(1))
                    .ok()?;
            s.write_all(b"x").ok()
        })
        .join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `n` connections from inside `from` to `to`, each timed from connect to
/// the answer.
fn connections(from: &NetNs, to: SocketAddr, n: usize) -> Result<Vec<f64>> {
    from.run_in(move || -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
                .with_context(|| format!("connection {} of {n} to {to}", out.len() + 1))?;
            out.push(t.elapsed().as_secs_f64());
        }
        Ok(out)
    })?
}

/// A pod made by weir on `node`.
fn weir_pod(node: &TestNode, tag: &str) -> Result<(NetNs, IpAddr)> {
    let ns = node.pod_netns(tag)?;
    let inv = Invocation::new(
        "ADD",
        &node.container_id(tag),
        &ns.path().display().to_string(),
        "eth0",
        node.config("1.0.0"),
    );
    let result = node.weir(&inv)?.ok()?.context("ADD result")?;
    let ip: IpAddr = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .context("address")?
        .parse()?;
    Ok((ns, ip))
}

struct IptablesSetup {
    node: NetNs,
    client: NetNs,
    server: NetNs,
}

/// client (10.50.0.2) -- node (router, the rules) -- server (10.51.0.2).
fn iptables_setup() -> Result<IptablesSetup> {
    let id = random_hex(6);
    let node = NetNs::new(&format!("wbin{id}"))?;
    let client = NetNs::new(&format!("wbic{id}"))?;
    let server = NetNs::new(&format!("wbis{id}"))?;
    for (ns, dev, net) in [(&client, "c", "10.50.0"), (&server, "s", "10.51.0")] {
        node.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node.ip(&["addr", "add", &format!("{net}.1/24"), "dev", dev])?;
        node.ip(&["link", "set", dev, "up"])?;
        ns.ip(&["addr", "add", &format!("{net}.2/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("{net}.1")])?;
    }
    cni_sysctl(&node)?;
    Ok(IptablesSetup {
        node,
        client,
        server,
    })
}

fn cni_sysctl(ns: &NetNs) -> Result<()> {
    crate_run(ns.command("sysctl")?.args(["-qw", "net.ipv4.ip_forward=1"]))
}

fn crate_run(cmd: &mut std::process::Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Runs figure 3 for every N in `sizes`, `reps` times, `conns` connections
/// each.
pub fn run(
    sizes: &[usize],
    reps: usize,
    conns: usize,
    workdir: &std::path::Path,
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for &n in sizes {
        // weir: N services in the maps, the last one on the backend pod.
        let node = TestNode::new(NodeOptions {
            pod_cidrs: vec!["10.77.0.0/24".parse()?],
            ..NodeOptions::default()
        })?;
        let (client, _) = weir_pod(&node, "lc")?;
        let (server, server_ip) = weir_pod(&node, "ls")?;
        let _echo = Echo::start(&server)?;
        let mut maps = ServiceMaps::open(&node.layout)?;
        for i in 0..n {
            let backends = if i == n - 1 {
                vec![
                    BackendAddr {
                        ip: server_ip,
                        port: 8080
                    };
                    BACKENDS_PER_SERVICE
                ]
            } else {
                (0..BACKENDS_PER_SERVICE)
                    .map(|j| BackendAddr {
                        ip: IpAddr::V4(Ipv4Addr::new(10, 1 + j as u8, (i >> 8) as u8, i as u8)),
                        port: 8080,
                    })
                    .collect()
            };
            maps.upsert(
                &Frontend::cluster_ip(IpAddr::V4(vip(i)), 80, 6),
                &ServiceSpec {
                    id: i as u32 + 1,
                    backends,
                    affinity_timeout_s: None,
                },
            )?;
        }

        // iptables: the same N services, the last one on the server.
        let ipt = iptables_setup()?;
        let _echo2 = Echo::start(&ipt.server)?;
        let mut rules = iptables_rules(n);
        let last_chain = format!("{:016X}", n - 1);
        // Point the last service's endpoints at the server.
        rules = rules
            .lines()
            .map(|l| {
                if l.contains(&format!("KUBE-SEP-{}", &last_chain[1..]))
                    && l.contains("--to-destination")
                {
                    format!(
                        "{} --to-destination 10.51.0.2:8080",
                        l.split(" --to-destination").next().unwrap_or(l)
                    )
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        let file = workdir.join(format!("latency-{n}.rules"));
        std::fs::write(&file, rules)?;
        crate_run(
            ipt.node
                .command("iptables-nft-restore")?
                .stdin(std::fs::File::open(&file)?),
        )?;

        let target = SocketAddr::new(IpAddr::V4(vip(n - 1)), 80);
        // Warm both paths (neighbours, conntrack) before measuring.
        connections(&client, target, 20)?;
        connections(&ipt.client, target, 20)?;
        for rep in 0..reps {
            for k in 0..2 {
                let (system, from) = if (k + rep) % 2 == 0 {
                    ("weir", &client)
                } else {
                    ("iptables", &ipt.client)
                };
                eprintln!("  latency: {system} N={n} rep {}/{reps}", rep + 1);
                for s in connections(from, target, conns)? {
                    out.push(Sample {
                        system,
                        services: n,
                        seconds: s,
                    });
                }
            }
        }
    }
    Ok(out)
}
