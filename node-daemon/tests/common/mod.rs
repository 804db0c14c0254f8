//! Test fixtures: a network namespace with an underlay, a pin root and temp
//! directories of the test's own (all removed on drop, even when the test
//! fails), and the real `weir-node` binary run inside the namespace.
//!
//! The binary is started with `nsenter --net` (not `ip netns exec`): only the
//! network namespace changes, so the pins land on the host's bpffs where the
//! test can read and remove them.

#![allow(dead_code)]

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use weir_datapath::{PinLayout, bpffs};

pub const BIN: &str = env!("CARGO_BIN_EXE_weir-node");
pub const HTTP_PORT: u16 = 9962;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{tag}-{:x}-{nanos:x}", std::process::id())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace holding an "uplink" veth (`up0`, 192.0.2.1/24, MTU
/// 1450, default route via 192.0.2.254), so that remote nodes at 192.0.2.x
/// are on-link. Deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("wnt");
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "up0", "type", "veth", "peer", "name", "up1"],
            vec!["link", "set", "up0", "mtu", "1450"],
            vec!["link", "set", "up1", "mtu", "1450"],
            vec!["link", "set", "up0", "up"],
            vec!["link", "set", "up1", "up"],
            vec!["addr", "add", "192.0.2.1/24", "dev", "up0"],
            vec!["route", "add", "default", "via", "192.0.2.254"],
        ] {
            ns.ip(&args);
        }
        ns
    }

    /// `ip -n <ns> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command run inside the namespace (network only).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// weir's routes in the namespace, as (destination, gateway).
    pub fn weir_routes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for family in ["-4", "-6"] {
            let json = self.ip(&["-j", family, "route", "show", "proto", "87"]);
            let routes: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
            for r in routes {
                out.push((
                    r["dst"].as_str().unwrap_or_default().to_string(),
                    r["gateway"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        out.sort();
        out
    }

    /// `nft list table inet weir` in the namespace, if the table exists.
    pub fn weir_nft_table(&self) -> Option<String> {
        let out = self
            .command("nft")
            .args(["list", "table", "inet", "weir"])
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn ifindex(&self, name: &str) -> u32 {
        let json = self.ip(&["-j", "link", "show", name]);
        let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        v[0]["ifindex"].as_u64().unwrap() as u32
    }

    /// A plain HTTP/1.0 GET to weir-node's port inside the namespace, from a
    /// thread of its own that joins the namespace. Returns (status, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let ns_path = format!("/run/netns/{}", self.name);
        let path = path.to_string();
        std::thread::spawn(move || -> Option<(u16, String)> {
            let f = fs::File::open(&ns_path).ok()?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let mut s = TcpStream::connect(("127.0.0.1", HTTP_PORT)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: weir\r\n\r\n").ok()?;
            let mut resp = String::new();
            s.read_to_string(&mut resp).ok()?;
            let status = resp.split_whitespace().nth(1)?.parse().ok()?;
            let body = resp.split_once("\r\n\r\n")?.1.to_string();
            Some((status, body))
        })
        .join()
        .ok()
        .flatten()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Everything one test owns: its namespace, pin root and directories.
pub struct Node {
    pub ns: Netns,
    pub layout: PinLayout,
    pub tmp: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Node {
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).expect("bpffs at /sys/fs/bpf");
        let layout = PinLayout::new(format!("/sys/fs/bpf/{}", unique("weir-test")));
        let tmp = tempfile::Builder::new()
            .prefix("weir-node-test-")
            .tempdir()
            .unwrap();
        fs::create_dir(tmp.path().join("nodes")).unwrap();
        Node {
            ns: Netns::new(),
            layout,
            tmp,
        }
    }

    pub fn nodes_dir(&self) -> PathBuf {
        self.tmp.path().join("nodes")
    }

    pub fn node_json(&self) -> PathBuf {
        self.tmp.path().join("run/node.json")
    }

    pub fn endpoints_dir(&self) -> PathBuf {
        self.tmp.path().join("run/endpoints")
    }

    /// `weir-node <global paths> args...` in the namespace.
    pub fn weir(&self, args: &[&str]) -> Command {
        let mut c = self.ns.command(BIN);
        c.arg("--pin-root")
            .arg(self.layout.root())
            .arg("--node-json")
            .arg(self.node_json())
            .arg("--endpoints-dir")
            .arg(self.endpoints_dir())
            .args(args);
        c
    }

    /// Runs a `weir-node` command that must succeed; returns its stdout.
    pub fn weir_ok(&self, args: &[&str]) -> String {
        let out = run(&mut self.weir(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod CIDR entries of the NODES map as `weir-node bpf nodes list -o
    /// json` shows them (host entries for the nodes' own addresses are left
    /// out: see [`TestNode::node_host_entries`]); `None` while the pins are
    /// not there.
    pub fn nodes_map(&self) -> Option<Vec<(String, String)>> {
        self.nodes_map_all().map(|all| {
            all.into_iter()
                .filter(|(cidr, _)| !cidr.ends_with("/32") && !cidr.ends_with("/128"))
                .collect()
        })
    }

    /// The host entries of the NODES map: other nodes' own addresses.
    pub fn node_host_entries(&self) -> Option<Vec<(String, String)>> {
        self.nodes_map_all().map(|all| {
            all.into_iter()
                .filter(|(cidr, _)| cidr.ends_with("/32") || cidr.ends_with("/128"))
                .collect()
        })
    }

    fn nodes_map_all(&self) -> Option<Vec<(String, String)>> {
        let out = self
            .weir(&["bpf", "nodes", "list", "-o", "json"])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut out: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r["cidr"].as_str().unwrap().to_string(),
                    r["nodeIP"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        Some(out)
    }

    /// Starts the daemon on the manifest directory `dir`.
    pub fn start(&self, node_name: &str, dir: &Path) -> Daemon {
        let mut args = vec!["--nodes-dir".into(), dir.as_os_str().to_owned()];
        args.extend(["--nodes-poll-ms".into(), "200".into()]);
        self.start_with(node_name, &args)
    }

    /// Starts the daemon on the API server of `kubeconfig`.
    pub fn start_kube(&self, node_name: &str, kubeconfig: &Path) -> Daemon {
        self.start_with(
            node_name,
            &["--kubeconfig".into(), kubeconfig.as_os_str().to_owned()],
        )
    }

    fn start_with(&self, node_name: &str, source: &[std::ffi::OsString]) -> Daemon {
        let log = self.tmp.path().join(format!("{}.log", unique("daemon")));
        let file = fs::File::create(&log).unwrap();
        let child = self
            .weir(&[
                "run",
                "--node-name",
                node_name,
                "--listen",
                &format!("127.0.0.1:{HTTP_PORT}"),
                "--resync-seconds",
                "2",
                "--hygiene-seconds",
                "2",
            ])
            .args(source)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Writes a Node manifest into the manifest directory.
    pub fn write_node(&self, file: &str, name: &str, cidrs: &[&str], ips: &[&str]) {
        fs::write(self.nodes_dir().join(file), node_yaml(name, cidrs, ips)).unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.layout.root());
    }
}

pub fn node_yaml(name: &str, cidrs: &[&str], ips: &[&str]) -> String {
    let mut s =
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDRs:\n");
    for c in cidrs {
        s.push_str(&format!("  - {c}\n"));
    }
    s.push_str("status:\n  addresses:\n  - type: Hostname\n    address: ");
    s.push_str(name);
    s.push('\n');
    for ip in ips {
        s.push_str(&format!("  - type: InternalIP\n    address: \"{ip}\"\n"));
    }
    s
}

/// A running daemon; killed on drop if still running.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "weir-node ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    /// Like [`wait_for`], with the daemon's log in the failure message.
    pub fn until<T>(&self, secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; weir-node log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` until it returns `Some`, for up to `secs` seconds.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}
