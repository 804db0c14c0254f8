//! The programs moving real packets between network namespaces, wired by hand
//! the way the CNI binary wires a pod (the CNI's own end-to-end tests drive the
//! real binary). Each test builds its own uniquely named namespaces and pin
//! directories and removes them even when it fails.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use weir_common::{DropReason, ENDPOINT_F_READY, Endpoint};
use weir_datapath::{
    PinLayout,
    attach::{self, AttachMode},
    bpffs, loader,
    maps::{DropMap, EndpointMap, NodeMap, TrafficMap},
    object,
    services::{BackendAddr, Frontend, ServiceMaps, ServiceSpec},
};

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("wt{tag}{:x}", (std::process::id() ^ nanos) & 0xffffff)
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces and a pin directory owned by one test.
struct Topology {
    netns: Vec<String>,
    pins: Vec<PinLayout>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server_threads: Vec<std::thread::JoinHandle<()>>,
}

impl Topology {
    fn new() -> Topology {
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).expect("bpffs");
        Topology {
            netns: Vec::new(),
            pins: Vec::new(),
            stop: Default::default(),
            server_threads: Vec::new(),
        }
    }

    fn netns(&mut self, name: String) -> String {
        ok(&["ip", "netns", "add", &name]);
        self.netns.push(name.clone());
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    fn pin_layout(&mut self, tag: &str) -> PinLayout {
        let layout = PinLayout::new(PathBuf::from(format!("/sys/fs/bpf/{}", unique(tag))));
        self.pins.push(layout.clone());
        layout
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.server_threads.drain(..) {
            let _ = t.join();
        }
        for ns in self.netns.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        for p in &self.pins {
            let _ = loader::unpin_all(p);
        }
    }
}

/// Runs `f` on a fresh thread that has entered the named network namespace.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

fn mac_of(ns: &str, ifname: &str) -> [u8; 6] {
    let out = ok(&["ip", "-n", ns, "-br", "link", "show", ifname]);
    let mac = out.split_whitespace().nth(2).expect("mac column");
    let mut bytes = [0u8; 6];
    for (i, part) in mac.split(':').enumerate() {
        bytes[i] = u8::from_str_radix(part, 16).expect("hex");
    }
    bytes
}

fn ifindex_of(ns: &str, ifname: &str) -> u32 {
    let out = ok(&["ip", "-n", ns, "-o", "link", "show", ifname]);
    out.split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("ifindex")
}

struct Pod {
    ns: String,
    ip: IpAddr,
    host_if: String,
    host_ifindex: u32,
}

/// Wires a pod the way the CNI does: veth, /32, default route via a link-local
/// gateway with a permanent neighbour entry, host route, programs, endpoint.
fn add_pod(
    topo: &mut Topology,
    node_ns: &str,
    layout: &PinLayout,
    ip: &str,
    mode: AttachMode,
) -> Pod {
    let ns = topo.netns(unique("p"));
    let host_if = unique("h");
    ok(&[
        "ip", "-n", node_ns, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0",
        "netns", &ns,
    ]);
    ok(&["ip", "-n", node_ns, "link", "set", &host_if, "up"]);
    let host_mac = mac_of(node_ns, &host_if);
    let host_mac_s = host_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    ok(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{ip}/32"),
        "dev",
        "eth0",
    ]);
    ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    ok(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ]);
    ok(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        &ns,
        "neigh",
        "add",
        "169.254.1.1",
        "lladdr",
        &host_mac_s,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    ok(&[
        "ip",
        "-n",
        node_ns,
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        &host_if,
    ]);
    let pod_mac = mac_of(&ns, "eth0");
    let host_ifindex = ifindex_of(node_ns, &host_if);
    let ip: IpAddr = ip.parse().unwrap();
    in_netns(node_ns, || {
        attach::attach_interface(layout, &host_if, mode).expect("attach");
    });
    EndpointMap::open(layout)
        .unwrap()
        .upsert(
            ip,
            Endpoint {
                ifindex: host_ifindex,
                flags: ENDPOINT_F_READY,
                mac: pod_mac,
                host_mac,
            },
        )
        .unwrap();
    Pod {
        ns,
        ip,
        host_if,
        host_ifindex,
    }
}

fn ping(from: &Pod, to: IpAddr, count: u32) -> bool {
    sh(&[
        "ip",
        "netns",
        "exec",
        &from.ns,
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        &to.to_string(),
    ])
    .status
    .success()
}

/// The counters, for failure messages.
fn counters(layout: &PinLayout) -> String {
    format!(
        "traffic {:?} drops {:?} endpoints {:?}",
        TrafficMap::open(layout).and_then(|m| m.totals()),
        DropMap::open(layout).and_then(|m| m.totals()),
        EndpointMap::open(layout).and_then(|m| m.list())
    )
}

fn same_node_delivery(mode: AttachMode) {
    let mut topo = Topology::new();
    let node = topo.netns(unique("n"));
    // Same-node traffic never enters the host's routing: prove it with
    // forwarding off.
    ok(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=0",
    ]);
    let layout = topo.pin_layout("same");
    in_netns(&node, || {
        loader::load(&layout, object::OBJECT).expect("load")
    });
    let a = add_pod(&mut topo, &node, &layout, "10.240.0.2", mode);
    let b = add_pod(&mut topo, &node, &layout, "10.240.0.3", mode);

    assert!(ping(&a, b.ip, 5), "a -> b: {}", counters(&layout));
    assert!(ping(&b, a.ip, 5), "b -> a");

    let traffic = TrafficMap::open(&layout).unwrap().totals().unwrap();
    let ta = traffic[&a.host_ifindex];
    let tb = traffic[&b.host_ifindex];
    assert!(
        ta.from_pod_packets >= 10,
        "a sent 5 requests and 5 replies: {ta:?}"
    );
    assert!(tb.to_pod_packets >= 5, "b received the requests: {tb:?}");

    // A spoofed source is dropped and counted against the sender.
    ok(&[
        "ip",
        "-n",
        &a.ns,
        "addr",
        "add",
        "10.240.0.99/32",
        "dev",
        "eth0",
    ]);
    let spoofed = sh(&[
        "ip",
        "netns",
        "exec",
        &a.ns,
        "ping",
        "-c",
        "3",
        "-i",
        "0.05",
        "-W",
        "1",
        "-I",
        "10.240.0.99",
        &b.ip.to_string(),
    ]);
    assert!(
        !spoofed.status.success(),
        "spoofed pings must not be answered"
    );
    let drops = DropMap::open(&layout).unwrap().totals().unwrap();
    assert!(
        drops
            .get(&(a.host_ifindex, DropReason::SpoofedIp))
            .copied()
            .unwrap_or(0)
            >= 3,
        "spoof drops counted: {drops:?}"
    );
    let _ = (&a.host_if, &b.host_if);
}

#[test]
fn same_node_pods_reach_each_other_with_forwarding_off_tcx() {
    same_node_delivery(AttachMode::Tcx);
}

#[test]
fn same_node_pods_reach_each_other_with_forwarding_off_clsact() {
    same_node_delivery(AttachMode::Clsact);
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_the_underlay() {
    let mut topo = Topology::new();
    let n1 = topo.netns(unique("n"));
    let n2 = topo.netns(unique("n"));
    let up1 = unique("u");
    ok(&[
        "ip", "-n", &n1, "link", "add", &up1, "type", "veth", "peer", "name", "uplink", "netns",
        &n2,
    ]);
    ok(&["ip", "-n", &n1, "link", "set", &up1, "name", "uplink"]);
    for (ns, addr) in [(&n1, "192.168.77.1/24"), (&n2, "192.168.77.2/24")] {
        ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "uplink"]);
        ok(&["ip", "-n", ns, "link", "set", "uplink", "up"]);
        ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }
    ok(&[
        "ip",
        "-n",
        &n1,
        "route",
        "add",
        "10.241.2.0/24",
        "via",
        "192.168.77.2",
    ]);
    ok(&[
        "ip",
        "-n",
        &n2,
        "route",
        "add",
        "10.241.1.0/24",
        "via",
        "192.168.77.1",
    ]);
    let l1 = topo.pin_layout("x1");
    let l2 = topo.pin_layout("x2");
    in_netns(&n1, || loader::load(&l1, object::OBJECT).expect("load n1"));
    in_netns(&n2, || loader::load(&l2, object::OBJECT).expect("load n2"));
    NodeMap::open(&l1)
        .unwrap()
        .upsert(
            "10.241.2.0".parse().unwrap(),
            24,
            "192.168.77.2".parse().unwrap(),
        )
        .unwrap();
    NodeMap::open(&l2)
        .unwrap()
        .upsert(
            "10.241.1.0".parse().unwrap(),
            24,
            "192.168.77.1".parse().unwrap(),
        )
        .unwrap();

    let a = add_pod(&mut topo, &n1, &l1, "10.241.1.10", AttachMode::Tcx);
    let b = add_pod(&mut topo, &n2, &l2, "10.241.2.10", AttachMode::Tcx);
    assert!(ping(&a, b.ip, 5), "a -> b across nodes");
    assert!(ping(&b, a.ip, 5), "b -> a across nodes");
    // The receiving node delivers through its stack: to_pod counts it.
    let tb = TrafficMap::open(&l2).unwrap().totals().unwrap()[&b.host_ifindex];
    assert!(tb.to_pod_packets >= 5, "{tb:?}");
    assert_eq!(
        NodeMap::open(&l1).unwrap().list().unwrap(),
        vec![(
            "10.241.2.0".parse().unwrap(),
            24,
            "192.168.77.2".parse().unwrap()
        )]
    );
}

/// Two nodes joined by an underlay, each with its pod CIDR routed to the
/// other and entered in the other's node map.
fn two_nodes(topo: &mut Topology) -> ((String, PinLayout), (String, PinLayout)) {
    let n1 = topo.netns(unique("n"));
    let n2 = topo.netns(unique("n"));
    let up = unique("u");
    ok(&[
        "ip", "-n", &n1, "link", "add", &up, "type", "veth", "peer", "name", "uplink", "netns", &n2,
    ]);
    ok(&["ip", "-n", &n1, "link", "set", &up, "name", "uplink"]);
    for (ns, addr) in [(&n1, "192.168.78.1/24"), (&n2, "192.168.78.2/24")] {
        ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "uplink"]);
        ok(&["ip", "-n", ns, "link", "set", "uplink", "up"]);
        ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }
    ok(&[
        "ip",
        "-n",
        &n1,
        "route",
        "add",
        "10.242.2.0/24",
        "via",
        "192.168.78.2",
    ]);
    ok(&[
        "ip",
        "-n",
        &n2,
        "route",
        "add",
        "10.242.1.0/24",
        "via",
        "192.168.78.1",
    ]);
    let l1 = topo.pin_layout("s1");
    let l2 = topo.pin_layout("s2");
    in_netns(&n1, || loader::load(&l1, object::OBJECT).expect("load n1"));
    in_netns(&n2, || loader::load(&l2, object::OBJECT).expect("load n2"));
    NodeMap::open(&l1)
        .unwrap()
        .upsert(
            "10.242.2.0".parse().unwrap(),
            24,
            "192.168.78.2".parse().unwrap(),
        )
        .unwrap();
    NodeMap::open(&l2)
        .unwrap()
        .upsert(
            "10.242.1.0".parse().unwrap(),
            24,
            "192.168.78.1".parse().unwrap(),
        )
        .unwrap();
    ((n1, l1), (n2, l2))
}

/// Starts a TCP and a UDP "who" server in a pod, on a thread that entered
/// the pod's namespace: each answer is "<name> <peer address>". The thread
/// stops when the topology is dropped.
fn serve(topo: &mut Topology, pod: &Pod, name: &str) {
    let path = format!("/run/netns/{}", pod.ns);
    let name = name.to_string();
    let stop = topo.stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let tcp = std::net::TcpListener::bind("0.0.0.0:8080").expect("bind tcp");
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind("0.0.0.0:5353").expect("bind udp");
        udp.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut s, peer)) => {
                    let _ = std::io::Write::write_all(
                        &mut s,
                        format!("{name} {}\n", peer.ip()).as_bytes(),
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server started");
    topo.server_threads.push(handle);
}

/// One TCP request from `client` to `to`: returns (server's answer, the peer
/// address the client's socket saw).
fn tcp_request(client: &Pod, to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let ns = client.ns.clone();
    in_netns(&ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let peer = s.peer_addr()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok((answer.trim().to_string(), peer))
    })
}

/// One UDP request on a connected socket (which accepts only datagrams from
/// `to` itself): the answer proves the reply came back from the VIP.
fn udp_request(client: &Pod, to: SocketAddr) -> std::io::Result<String> {
    let ns = client.ns.clone();
    in_netns(&ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            s.send(b"hi\n")?;
            if let Ok(n) = s.recv(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string());
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no UDP answer",
        ))
    })
}

const VIP: &str = "10.96.0.10";

fn program(
    layout: &PinLayout,
    proto: u8,
    port: u16,
    backend_port: u16,
    backends: &[&Pod],
    affinity: Option<u32>,
) {
    ServiceMaps::open(layout)
        .unwrap()
        .upsert(
            &Frontend::cluster_ip(VIP.parse().unwrap(), port, proto),
            &ServiceSpec {
                id: u32::from(port) * 10 + u32::from(proto),
                backends: backends
                    .iter()
                    .map(|p| BackendAddr {
                        ip: p.ip,
                        port: backend_port,
                    })
                    .collect(),
                affinity_timeout_s: affinity,
            },
        )
        .unwrap();
}

#[test]
fn clusterip_spreads_tcp_and_udp_over_backends_on_both_nodes_and_the_client_sees_the_vip() {
    let mut topo = Topology::new();
    let ((n1, l1), (n2, l2)) = two_nodes(&mut topo);
    let client = add_pod(&mut topo, &n1, &l1, "10.242.1.10", AttachMode::Tcx);
    let local = add_pod(&mut topo, &n1, &l1, "10.242.1.20", AttachMode::Tcx);
    let remote = add_pod(&mut topo, &n2, &l2, "10.242.2.20", AttachMode::Tcx);
    serve(&mut topo, &local, "local");
    serve(&mut topo, &remote, "remote");
    program(&l1, 6, 80, 8080, &[&local, &remote], None);
    program(&l1, 17, 53, 5353, &[&local, &remote], None);

    let vip_tcp: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..24 {
        let (answer, peer) = tcp_request(&client, vip_tcp)
            .unwrap_or_else(|e| panic!("TCP via VIP: {e}: {}", counters(&l1)));
        assert_eq!(peer, vip_tcp, "the client's peer is the VIP");
        let mut words = answer.split_whitespace();
        let backend = words.next().unwrap_or_default().to_string();
        let seen_client = words.next().unwrap_or_default();
        assert_eq!(
            seen_client, "10.242.1.10",
            "the backend sees the client's own address: {answer}"
        );
        *hits.entry(backend).or_default() += 1;
    }
    assert_eq!(
        hits.keys().cloned().collect::<Vec<_>>(),
        vec!["local".to_string(), "remote".to_string()],
        "spread: {hits:?}"
    );

    let vip_udp: SocketAddr = format!("{VIP}:53").parse().unwrap();
    let mut udp_hits: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..24 {
        let answer = udp_request(&client, vip_udp).unwrap_or_else(|e| {
            panic!(
                "UDP via VIP: {e}: n1 {} n2 {} ct {:?} rev {:?}",
                counters(&l1),
                counters(&l2),
                ServiceMaps::open(&l1)
                    .unwrap()
                    .conntrack()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| k.proto == 17)
                    .collect::<Vec<_>>(),
                ServiceMaps::open(&l1)
                    .unwrap()
                    .revnat()
                    .unwrap()
                    .iter()
                    .filter(|(k, _)| k.proto == 17)
                    .collect::<Vec<_>>()
            )
        });
        assert!(answer.ends_with(" 10.242.1.10"), "{answer}");
        *udp_hits
            .entry(
                answer
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            )
            .or_default() += 1;
    }
    assert_eq!(udp_hits.len(), 2, "UDP spread: {udp_hits:?}");
    let ct = ServiceMaps::open(&l1).unwrap().conntrack().unwrap();
    assert!(ct.len() >= 24, "flows are tracked: {}", ct.len());
    let _ = &n2;
}

#[test]
fn affinity_pins_a_client_and_a_removed_backend_gets_no_new_connections() {
    let mut topo = Topology::new();
    let ((n1, l1), (n2, l2)) = two_nodes(&mut topo);
    let client = add_pod(&mut topo, &n1, &l1, "10.242.1.11", AttachMode::Tcx);
    let b1 = add_pod(&mut topo, &n1, &l1, "10.242.1.21", AttachMode::Tcx);
    let b2 = add_pod(&mut topo, &n2, &l2, "10.242.2.21", AttachMode::Tcx);
    serve(&mut topo, &b1, "b1");
    serve(&mut topo, &b2, "b2");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();

    program(&l1, 6, 80, 8080, &[&b1, &b2], Some(600));
    let first = tcp_request(&client, vip).expect("first").0;
    for _ in 0..12 {
        assert_eq!(
            tcp_request(&client, vip)
                .expect("again")
                .0
                .split_whitespace()
                .next(),
            first.split_whitespace().next(),
            "affinity"
        );
    }

    // Drop affinity and remove b1: every new connection lands on b2.
    program(&l1, 6, 80, 8080, &[&b2], None);
    for _ in 0..12 {
        let answer = tcp_request(&client, vip).expect("after removal").0;
        assert!(answer.starts_with("b2 "), "{answer}");
    }
}

#[test]
fn a_service_without_backends_refuses_connections_at_once() {
    let mut topo = Topology::new();
    let ((n1, l1), _) = two_nodes(&mut topo);
    let client = add_pod(&mut topo, &n1, &l1, "10.242.1.12", AttachMode::Tcx);
    program(&l1, 6, 80, 8080, &[], None);
    let started = std::time::Instant::now();
    let err = tcp_request(&client, format!("{VIP}:80").parse().unwrap()).expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rejected, not timed out"
    );
}

/// Two nodes and a host outside the cluster on one underlay (a bridge in a
/// namespace of its own). Node addresses are in each other's node maps, so
/// that node-to-node traffic from pods is never masqueraded.
fn cluster_with_outside(topo: &mut Topology) -> ((String, PinLayout), (String, PinLayout), String) {
    let under = topo.netns(unique("b"));
    ok(&["ip", "-n", &under, "link", "add", "br0", "type", "bridge"]);
    ok(&["ip", "-n", &under, "link", "set", "br0", "up"]);
    let n1 = topo.netns(unique("n"));
    let n2 = topo.netns(unique("n"));
    let out = topo.netns(unique("o"));
    for (ns, addr) in [
        (&n1, "192.168.79.1/24"),
        (&n2, "192.168.79.2/24"),
        (&out, "192.168.79.100/24"),
    ] {
        let port = unique("v");
        ok(&[
            "ip", "-n", &under, "link", "add", &port, "type", "veth", "peer", "name", "uplink",
            "netns", ns,
        ]);
        ok(&[
            "ip", "-n", &under, "link", "set", &port, "master", "br0", "up",
        ]);
        ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "uplink"]);
        ok(&["ip", "-n", ns, "link", "set", "uplink", "up"]);
        ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }
    ok(&[
        "ip",
        "-n",
        &n1,
        "route",
        "add",
        "10.243.2.0/24",
        "via",
        "192.168.79.2",
    ]);
    ok(&[
        "ip",
        "-n",
        &n2,
        "route",
        "add",
        "10.243.1.0/24",
        "via",
        "192.168.79.1",
    ]);
    let l1 = topo.pin_layout("np1");
    let l2 = topo.pin_layout("np2");
    for (ns, layout) in [(&n1, &l1), (&n2, &l2)] {
        in_netns(ns, || {
            loader::load(layout, object::OBJECT).expect("load");
            attach::attach_netdev(layout, "uplink", AttachMode::Tcx).expect("attach netdev");
        });
    }
    let mut m1 = NodeMap::open(&l1).unwrap();
    m1.upsert(
        "10.243.2.0".parse().unwrap(),
        24,
        "192.168.79.2".parse().unwrap(),
    )
    .unwrap();
    m1.upsert(
        "192.168.79.2".parse().unwrap(),
        32,
        "192.168.79.2".parse().unwrap(),
    )
    .unwrap();
    let mut m2 = NodeMap::open(&l2).unwrap();
    m2.upsert(
        "10.243.1.0".parse().unwrap(),
        24,
        "192.168.79.1".parse().unwrap(),
    )
    .unwrap();
    m2.upsert(
        "192.168.79.1".parse().unwrap(),
        32,
        "192.168.79.1".parse().unwrap(),
    )
    .unwrap();
    ((n1, l1), (n2, l2), out)
}

#[test]
fn nodeport_from_outside_reaches_local_and_remote_backends_through_each_node() {
    let mut topo = Topology::new();
    let ((n1, l1), (n2, l2), out) = cluster_with_outside(&mut topo);
    let local = add_pod(&mut topo, &n1, &l1, "10.243.1.20", AttachMode::Tcx);
    let remote = add_pod(&mut topo, &n2, &l2, "10.243.2.20", AttachMode::Tcx);
    serve(&mut topo, &local, "on-n1");
    serve(&mut topo, &remote, "on-n2");
    for (layout, node_ip) in [(&l1, "192.168.79.1"), (&l2, "192.168.79.2")] {
        ServiceMaps::open(layout)
            .unwrap()
            .upsert(
                &Frontend::node_port(node_ip.parse().unwrap(), 30080, 6),
                &ServiceSpec {
                    id: 7,
                    backends: vec![
                        BackendAddr {
                            ip: local.ip,
                            port: 8080,
                        },
                        BackendAddr {
                            ip: remote.ip,
                            port: 8080,
                        },
                    ],
                    affinity_timeout_s: None,
                },
            )
            .unwrap();
    }
    let client = Pod {
        ns: out.clone(),
        ip: "192.168.79.100".parse().unwrap(),
        host_if: String::new(),
        host_ifindex: 0,
    };
    for node_ip in ["192.168.79.1", "192.168.79.2"] {
        let to: SocketAddr = format!("{node_ip}:30080").parse().unwrap();
        let mut hits: BTreeMap<String, String> = BTreeMap::new();
        for _ in 0..20 {
            let (answer, peer) = tcp_request(&client, to).unwrap_or_else(|e| {
                panic!(
                    "NodePort {to}: {e}: n1 {} n2 {}",
                    counters(&l1),
                    counters(&l2)
                )
            });
            assert_eq!(peer, to, "the client talks to the node");
            let mut words = answer.split_whitespace();
            let backend = words.next().unwrap_or_default().to_string();
            let seen = words.next().unwrap_or_default().to_string();
            hits.insert(backend, seen);
        }
        assert_eq!(hits.len(), 2, "both backends through {node_ip}: {hits:?}");
        // A backend on the receiving node sees the client; one on the other
        // node sees the receiving node (SNAT), so its reply returns there.
        let (near, far) = if node_ip == "192.168.79.1" {
            ("on-n1", "on-n2")
        } else {
            ("on-n2", "on-n1")
        };
        assert_eq!(hits[near], "192.168.79.100", "{hits:?}");
        assert_eq!(hits[far], node_ip, "{hits:?}");
    }
}

#[test]
fn loading_a_changed_object_under_traffic_relinks_every_pod_and_loses_no_packet() {
    let mut topo = Topology::new();
    let node = topo.netns(unique("n"));
    let layout = topo.pin_layout("upg");
    in_netns(&node, || {
        loader::load(&layout, object::OBJECT).expect("load")
    });
    let a = add_pod(&mut topo, &node, &layout, "10.244.9.2", AttachMode::Tcx);
    let b = add_pod(&mut topo, &node, &layout, "10.244.9.3", AttachMode::Clsact);
    let before = loader::pinned_program_ids(&layout).unwrap();

    // A different object: the same programs with bytes appended, so its
    // digest differs (as a rebuilt object's would).
    let mut changed = object::OBJECT.to_vec();
    changed.extend_from_slice(b"\0weir-upgrade-test");
    let ping = {
        let ns = a.ns.clone();
        let to = b.ip.to_string();
        std::thread::spawn(move || {
            let out = sh(&[
                "ip", "netns", "exec", &ns, "ping", "-n", "-q", "-c", "300", "-i", "0.01", "-W",
                "1", &to,
            ]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    let report = in_netns(&node, || loader::load(&layout, &changed).expect("upgrade"));
    assert_eq!(report.previous_digest, Some(object::digest()));
    assert_ne!(weir_datapath::object::digest_of(&changed), object::digest());
    let mut relinked = report.relinked_interfaces.clone();
    relinked.sort();
    let mut want = vec![a.host_if.clone(), b.host_if.clone()];
    want.sort();
    assert_eq!(
        relinked, want,
        "both pods, TCX and clsact, moved to the new programs"
    );
    assert_ne!(loader::pinned_program_ids(&layout).unwrap(), before);
    let summary = ping.join().unwrap();
    assert!(
        summary.contains("300 packets transmitted, 300 received"),
        "no packet lost during the upgrade: {summary}"
    );
    in_netns(&node, || {
        assert!(attach::is_attached(&layout, &a.host_if).unwrap());
        assert!(attach::is_attached(&layout, &b.host_if).unwrap());
    });
}
