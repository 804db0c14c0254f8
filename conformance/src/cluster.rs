//! A small weir cluster on one machine: nodes are network namespaces joined
//! by an underlay bridge, each running the real `weir-node` daemon from a
//! shared directory of Node manifests; pods are namespaces wired by the real
//! `weir` binary, invoked inside the node's namespace exactly as a runtime
//! does; a namespace outside the cluster sits on the same underlay. The lab,
//! the datapath end-to-end tests and the benchmarks all build on this.
//!
//! Everything carries a random prefix and is removed on drop (daemons
//! killed, pins removed, namespaces deleted), also when a test fails.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use weir_datapath::{PinLayout, bpffs, loader};

use crate::{
    cni::{self, Invocation},
    netns::NetNs,
    random_hex,
};

/// The port weir-node serves /metrics, /healthz and /readyz on in a cluster.
pub const METRICS_PORT: u16 = 9962;

/// Options of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Start weir-node on every node at once.
    pub start_daemons: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 2,
            start_daemons: true,
        }
    }
}

/// The executable `name` that cargo built next to the running executable
/// (`target/<profile>/<name>`), or `$WEIR_BIN_DIR/<name>`.
pub fn sibling_bin(name: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEIR_BIN_DIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} is not built next to {}: run `cargo build --release` (or set WEIR_BIN_DIR)",
        exe.display()
    )
}

pub struct ClusterNode {
    pub index: usize,
    pub name: String,
    pub netns: NetNs,
    pub ip: Ipv4Addr,
    pub pod_cidr: IpNetwork,
    pub layout: PinLayout,
    pub dir: PathBuf,
    daemon: Option<Child>,
    weir_node: PathBuf,
    nodes_dir: PathBuf,
}

/// A pod made by weir.
pub struct Pod {
    pub netns: NetNs,
    pub container_id: String,
    pub node: usize,
    pub ip: IpAddr,
    /// The ADD result.
    pub result: Value,
}

impl ClusterNode {
    pub fn node_info_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }

    pub fn endpoints_dir(&self) -> PathBuf {
        self.dir.join("endpoints")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("cni.log")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("weir-node.log")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), METRICS_PORT)
    }

    /// The weir network config of this node (CNI version 1.1.0).
    pub fn config(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "weirnet",
            "type": "weir",
            "pinRoot": self.layout.root(),
            "nodeInfo": self.node_info_path(),
            "ipamStateDir": self.dir.join("ipam"),
            "endpointsDir": self.endpoints_dir(),
            "logFile": self.log_file(),
        })
    }

    /// The `weir-node` global flags pointing at this node's state.
    fn global_args(&self) -> Vec<String> {
        vec![
            "--pin-root".into(),
            self.layout.root().display().to_string(),
            "--node-json".into(),
            self.node_info_path().display().to_string(),
            "--endpoints-dir".into(),
            self.endpoints_dir().display().to_string(),
        ]
    }

    /// Starts `weir-node run` inside the node's namespace and waits until it
    /// reports ready.
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.daemon.is_some() {
            bail!("weir-node already runs on {}", self.name);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.daemon_log())?;
        let mut cmd = self
            .netns
            .command(self.weir_node.to_str().context("weir-node path")?)?;
        cmd.args(self.global_args())
            .arg("run")
            .args(["--node-name", &self.name])
            .arg("--nodes-dir")
            .arg(&self.nodes_dir)
            .args(["--listen", &self.metrics_addr().to_string()])
            .args(["--resync-seconds", "5", "--hygiene-seconds", "5"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.daemon = Some(cmd.spawn().context("start weir-node")?);
        self.wait_ready(Duration::from_secs(30))
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.daemon.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.daemon = None;
                bail!(
                    "weir-node on {} exited ({status}): {}",
                    self.name,
                    fs::read_to_string(self.daemon_log()).unwrap_or_default()
                );
            }
            if let Ok((200, _)) = self.http_get("/readyz") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "weir-node on {} not ready after {timeout:?}: {}",
                    self.name,
                    fs::read_to_string(self.daemon_log()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP GET against the daemon, from inside the node's
    /// namespace: (status, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.metrics_addr();
        let path = path.to_owned();
        self.netns.run_in(move || -> Result<(u16, String)> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )?;
            let mut raw = String::new();
            s.read_to_string(&mut raw)?;
            let status = raw
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .context("no HTTP status")?;
            let body = raw
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            Ok((status, body))
        })?
    }

    /// Kills the daemon with SIGKILL (no chance to clean anything up).
    pub fn kill_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            child.wait()?;
        }
        Ok(())
    }

    pub fn daemon_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Runs `weir-node <args>` (an inspection command) against this node's
    /// state, inside its namespace; returns stdout.
    pub fn weir_node(&self, args: &[&str]) -> Result<String> {
        crate::netns::run(
            self.netns
                .command(self.weir_node.to_str().context("weir-node path")?)?
                .args(self.global_args())
                .args(args),
        )
    }

    /// Makes a pod: a namespace wired by `weir` ADD, run in the node's
    /// namespace as a runtime would.
    pub fn add_pod(&self, tag: &str) -> Result<Pod> {
        let netns = NetNs::new(&format!("{}p{tag}", self.netns.name()))?;
        let container_id = format!("{}-{tag}", self.netns.name());
        let mut inv = Invocation::new(
            "ADD",
            &container_id,
            &netns.path().display().to_string(),
            "eth0",
            self.config(),
        );
        inv.args = cni::kubernetes_args("default", &format!("pod-{tag}"), &container_id);
        let out = cni::invoke(&cni::weir_bin(), &inv, Some(&self.netns))?;
        let result = out.ok()?.context("ADD printed no result")?;
        let ip: IpAddr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("no address in the ADD result")?
            .parse()?;
        Ok(Pod {
            netns,
            container_id,
            node: self.index,
            ip,
            result,
        })
    }

    /// Removes a pod with `weir` DEL.
    pub fn del_pod(&self, pod: &Pod) -> Result<()> {
        let mut inv = Invocation::new(
            "DEL",
            &pod.container_id,
            &pod.netns.path().display().to_string(),
            "eth0",
            self.config(),
        );
        inv.config["prevResult"] = pod.result.clone();
        cni::invoke(&cni::weir_bin(), &inv, Some(&self.netns))?.ok()?;
        Ok(())
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.kill_daemon();
        let _ = loader::unpin_all(&self.layout);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub struct Cluster {
    pub id: String,
    /// Nodes before the underlay: they drop (daemons killed) first.
    pub nodes: Vec<ClusterNode>,
    pub outside: NetNs,
    pub outside_ip: Ipv4Addr,
    pub underlay: NetNs,
    pub dir: PathBuf,
    pub nodes_dir: PathBuf,
}

/// The Node manifest of node `i`.
fn node_manifest(name: &str, pod_cidr: &IpNetwork, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {pod_cidr}\n  podCIDRs:\n  - {pod_cidr}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {ip}\n  - type: Hostname\n    address: {name}\n"
    )
}

impl Cluster {
    /// Underlay 192.168.100.0/24: node i at .(i+1), the outside host at
    /// .100. Node i's pod CIDR is 10.200.i.0/24.
    pub fn new(options: ClusterOptions) -> Result<Cluster> {
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).context("bpffs")?;
        let id = random_hex(6);
        let dir = std::env::temp_dir().join(format!("weir-cluster-{id}"));
        let nodes_dir = dir.join("nodes");
        fs::create_dir_all(&nodes_dir)?;
        let weir_node = sibling_bin("weir-node")?;

        let underlay = NetNs::new(&format!("wc{id}u"))?;
        underlay.ip(&["link", "add", "br0", "type", "bridge"])?;
        underlay.ip(&["link", "set", "br0", "up"])?;
        let plug = |ns: &NetNs, port: &str, addr: &str| -> Result<()> {
            underlay.ip(&[
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                ns.name(),
            ])?;
            underlay.ip(&["link", "set", port, "master", "br0", "up"])?;
            ns.ip(&["addr", "add", addr, "dev", "uplink"])?;
            ns.ip(&["link", "set", "uplink", "up"])?;
            Ok(())
        };

        let outside = NetNs::new(&format!("wc{id}o"))?;
        let outside_ip = Ipv4Addr::new(192, 168, 100, 100);
        plug(&outside, "out", &format!("{outside_ip}/24"))?;

        let mut nodes = Vec::new();
        for i in 0..options.nodes {
            let name = format!("node-{i}");
            let netns = NetNs::new(&format!("wc{id}n{i}"))?;
            let ip = Ipv4Addr::new(192, 168, 100, (i + 1) as u8);
            plug(&netns, &format!("n{i}"), &format!("{ip}/24"))?;
            let pod_cidr: IpNetwork = format!("10.200.{i}.0/24").parse()?;
            fs::write(
                nodes_dir.join(format!("{name}.yaml")),
                node_manifest(&name, &pod_cidr, ip),
            )?;
            let node_dir = dir.join(&name);
            fs::create_dir_all(&node_dir)?;
            nodes.push(ClusterNode {
                index: i,
                name,
                netns,
                ip,
                pod_cidr,
                layout: PinLayout::new(format!("/sys/fs/bpf/weir-cluster-{id}-{i}")),
                dir: node_dir,
                daemon: None,
                weir_node: weir_node.clone(),
                nodes_dir: nodes_dir.clone(),
            });
        }
        let mut cluster = Cluster {
            id,
            nodes,
            outside,
            outside_ip,
            underlay,
            dir,
            nodes_dir,
        };
        if options.start_daemons {
            for node in &mut cluster.nodes {
                node.start_daemon()?;
            }
            cluster.wait_for_routes(Duration::from_secs(20))?;
        }
        Ok(cluster)
    }

    /// Waits until every node routes every other node's pod CIDR.
    pub fn wait_for_routes(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                let want = other.pod_cidr.to_string();
                loop {
                    let routes = node.netns.ip(&["-4", "route", "show"])?;
                    if routes.lines().any(|l| l.starts_with(&want)) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("{} has no route to {want}: {routes}", node.name);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(())
    }
}

/// What a cluster left running on purpose (the lab): enough to find it
/// again and to tear it all down.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    pub id: String,
    pub dir: PathBuf,
    /// Every namespace, pods first.
    pub netns: Vec<String>,
    pub pin_roots: Vec<PathBuf>,
    pub daemon_pids: Vec<u32>,
}

impl Persisted {
    /// Whether any of its daemons still runs.
    pub fn alive(&self) -> bool {
        self.daemon_pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Kills the daemons and removes namespaces, pins and state.
    pub fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for pid in &self.daemon_pids {
            let pid = nix::unistd::Pid::from_raw(*pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        // Give the killed daemons a moment to release what they hold.
        for _ in 0..50 {
            if !self.alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for ns in &self.netns {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            if let Ok(o) = out
                && !o.status.success()
                && Path::new("/run/netns").join(ns).exists()
            {
                problems.push(format!(
                    "netns {ns}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
        for root in &self.pin_roots {
            if let Err(e) = loader::unpin_all(&PinLayout::new(root)) {
                problems.push(format!("pins {}: {e}", root.display()));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("{}: {e}", self.dir.display()));
        }
        problems
    }
}

impl Cluster {
    /// Leaves the cluster (and `pods`) running and returns what is needed to
    /// tear it down later. Nothing is cleaned up on the way out.
    pub fn persist(self, pods: Vec<Pod>) -> Persisted {
        let mut netns: Vec<String> = pods.iter().map(|p| p.netns.name().to_owned()).collect();
        netns.extend(self.nodes.iter().map(|n| n.netns.name().to_owned()));
        netns.push(self.outside.name().to_owned());
        netns.push(self.underlay.name().to_owned());
        let persisted = Persisted {
            id: self.id.clone(),
            dir: self.dir.clone(),
            netns,
            pin_roots: self
                .nodes
                .iter()
                .map(|n| n.layout.root().to_owned())
                .collect(),
            daemon_pids: self
                .nodes
                .iter()
                .filter_map(ClusterNode::daemon_pid)
                .collect(),
        };
        // Keep every namespace, daemon and pin: the lab owns them now.
        std::mem::forget(pods);
        std::mem::forget(self);
        persisted
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes (daemons, pins, state) go first, then the namespaces.
        self.nodes.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Pings `to` from inside `from`: `count` echoes at `interval`, each waited
/// for at most a second. Returns how many replies came back.
pub fn ping(from: &NetNs, to: IpAddr, count: u32, interval: &str) -> Result<u32> {
    let out = from
        .command("ping")?
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            interval,
            "-W",
            "1",
        ])
        .arg(to.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "N packets transmitted, M received, ..."
    let received = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(received)
}

/// A tiny server in a pod: each TCP connection on 8080 and each UDP datagram
/// on 5353 is answered with "<name> <peer address>". It stops when dropped.
pub struct WhoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pod {
    /// Starts a [`WhoServer`] answering as `name`.
    pub fn serve_who(&self, name: &str) -> Result<WhoServer> {
        use std::sync::{Arc, atomic::AtomicBool};
        let path = self.netns.path();
        let name = name.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let setup = (|| -> Result<(std::net::TcpListener, std::net::UdpSocket)> {
                let f = fs::File::open(&path)?;
                nix::sched::setns(
                    std::os::fd::AsFd::as_fd(&f),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )?;
                let tcp = std::net::TcpListener::bind("0.0.0.0:8080")?;
                tcp.set_nonblocking(true)?;
                let udp = std::net::UdpSocket::bind("0.0.0.0:5353")?;
                udp.set_read_timeout(Some(Duration::from_millis(5)))?;
                Ok((tcp, udp))
            })();
            let (tcp, udp) = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 512];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((mut s, peer)) = tcp.accept() {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(format!("{name} {}\n", peer.ip()).as_bytes());
                }
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("who server did not start")??;
        Ok(WhoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WhoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TCP request from inside `from` to `to`: (the answer, the peer
/// address the client's socket reports).
pub fn tcp_who(from: &NetNs, to: SocketAddr) -> Result<(String, SocketAddr)> {
    from.run_in(move || -> Result<(String, SocketAddr)> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let peer = s.peer_addr()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok((answer.trim().to_owned(), peer))
    })?
}

/// One UDP request on a connected socket (it accepts only datagrams from
/// `to` itself), retried twice.
pub fn udp_who(from: &NetNs, to: SocketAddr) -> Result<String> {
    from.run_in(move || -> Result<String> {
        let s = std::net::UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            s.send(b"who\n")?;
            if let Ok(n) = s.recv(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
            }
        }
        bail!("no UDP answer from {to}")
    })?
}
