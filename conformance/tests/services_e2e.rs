//! Services end to end (issue 6): weir-node programs Services and
//! EndpointSlices from the manifest directory into the maps, and pods and a
//! host outside the cluster reach backends on both nodes through ClusterIPs
//! and NodePorts; backends come and go; weir-node is killed under load.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use weir_conformance::cluster::{Cluster, ClusterNode, ClusterOptions, Pod, tcp_who, udp_who};

const VIP: &str = "10.96.0.10";

/// A Service with TCP 80 → 8080 and UDP 53 → 5353, NodePort 30080 on TCP,
/// and its EndpointSlice listing `backends` (ready).
fn service_yaml(name: &str, vip: &str, backends: &[&Pod], node_names: &[&str]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: lab\nspec:\n  type: NodePort\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports:\n  - {{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}\n  - {{name: dns, port: 53, targetPort: 5353, protocol: UDP}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-a\n  namespace: lab\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\n- {{name: dns, port: 5353, protocol: UDP}}\nendpoints:\n"
    );
    for (p, node) in backends.iter().zip(node_names) {
        let _ = write!(
            y,
            "- addresses: [{}]\n  conditions: {{ready: true}}\n  nodeName: {node}\n",
            p.ip
        );
    }
    if backends.is_empty() {
        y = y.replace("endpoints:\n", "endpoints: []\n");
    }
    y
}

/// Writes a manifest into the shared directory atomically.
fn publish(c: &Cluster, file: &str, text: &str) {
    let tmp = c.nodes_dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, c.nodes_dir.join(file)).unwrap();
}

fn frontends(node: &ClusterNode) -> Vec<Value> {
    let out = node
        .weir_node(&["bpf", "services", "list", "-o", "json"])
        .expect("services list");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until every node programs `frontend` with exactly `backends`
/// backends. `{node}` in `frontend` stands for each node's own address.
fn wait_programmed(c: &Cluster, frontend: &str, backends: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &c.nodes {
        let frontend = frontend.replace("{node}", &node.ip.to_string());
        loop {
            let rows = frontends(node);
            if rows.iter().any(|r| {
                r["frontend"] == frontend
                    && r["backends"].as_array().map(Vec::len) == Some(backends)
            }) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never programmed {frontend} with {backends} backends: {rows:?}",
                node.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn services_from_manifests_balance_tcp_and_udp_and_nodeports_across_nodes() {
    let c = Cluster::new(ClusterOptions::default()).expect("cluster");
    let client = c.nodes[0].add_pod("sc").unwrap();
    let b0 = c.nodes[0].add_pod("s0").unwrap();
    let b1 = c.nodes[1].add_pod("s1").unwrap();
    let _w0 = b0.serve_who("b0").unwrap();
    let _w1 = b1.serve_who("b1").unwrap();
    publish(
        &c,
        "svc-web.yaml",
        &service_yaml("web", VIP, &[&b0, &b1], &["node-0", "node-1"]),
    );
    wait_programmed(&c, &format!("{VIP}:80"), 2);
    wait_programmed(&c, "{node}:30080", 2);

    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut hits = BTreeMap::new();
    for _ in 0..24 {
        let (answer, peer) = tcp_who(&client.netns, vip).expect("TCP via the ClusterIP");
        assert_eq!(peer, vip, "the client's peer is the VIP");
        let mut w = answer.split_whitespace();
        let backend = w.next().unwrap_or_default().to_owned();
        assert_eq!(
            w.next(),
            Some(client.ip.to_string().as_str()),
            "the backend sees the client"
        );
        *hits.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(hits.len(), 2, "spread over both backends: {hits:?}");
    let udp_vip: SocketAddr = format!("{VIP}:53").parse().unwrap();
    for _ in 0..6 {
        let answer = udp_who(&client.netns, udp_vip).expect("UDP via the ClusterIP");
        assert!(answer.ends_with(&client.ip.to_string()), "{answer}");
    }
    let ct = c.nodes[0]
        .weir_node(&["bpf", "ct", "list", "-o", "json"])
        .unwrap();
    assert!(ct.contains(&format!("{VIP}:80")), "flows are tracked: {ct}");

    // NodePort from outside the cluster, through each node.
    for node in &c.nodes {
        let to: SocketAddr = format!("{}:30080", node.ip).parse().unwrap();
        let mut seen = BTreeMap::new();
        for _ in 0..16 {
            let (answer, peer) = tcp_who(&c.outside, to).expect("NodePort");
            assert_eq!(peer, to);
            seen.insert(
                answer
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                (),
            );
        }
        assert_eq!(
            seen.len(),
            2,
            "both backends through {}: {seen:?}",
            node.name
        );
    }

    // A backend leaves: new connections avoid it.
    publish(
        &c,
        "svc-web.yaml",
        &service_yaml("web", VIP, &[&b1], &["node-1"]),
    );
    wait_programmed(&c, &format!("{VIP}:80"), 1);
    for _ in 0..12 {
        let (answer, _) = tcp_who(&client.netns, vip).unwrap();
        assert!(answer.starts_with("b1 "), "{answer}");
    }

    // No endpoints: refused at once, not left to time out.
    publish(&c, "svc-web.yaml", &service_yaml("web", VIP, &[], &[]));
    wait_programmed(&c, &format!("{VIP}:80"), 0);
    let started = Instant::now();
    let err = tcp_who(&client.netns, vip).expect_err("refused");
    assert!(
        err.to_string().contains("refused") || err.to_string().contains("Connection refused"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let (_, metrics) = c.nodes[0].http_get("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_service_frontends ")),
        "{metrics}"
    );
}

#[test]
fn killing_weir_node_under_fifty_connections_a_second_fails_none() {
    let mut c = Cluster::new(ClusterOptions::default()).expect("cluster");
    let client = c.nodes[0].add_pod("kc").unwrap();
    let b0 = c.nodes[0].add_pod("k0").unwrap();
    let b1 = c.nodes[1].add_pod("k1").unwrap();
    let _w0 = b0.serve_who("b0").unwrap();
    let _w1 = b1.serve_who("b1").unwrap();
    publish(
        &c,
        "svc-web.yaml",
        &service_yaml("web", VIP, &[&b0, &b1], &["node-0", "node-1"]),
    );
    wait_programmed(&c, &format!("{VIP}:80"), 2);

    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let netns = client.netns.path();
    let load = std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&f),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )
        .unwrap();
        let mut failures = Vec::new();
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < Duration::from_secs(4) {
            let r = (|| -> std::io::Result<String> {
                use std::io::Read;
                let mut s = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                let mut a = String::new();
                s.read_to_string(&mut a)?;
                Ok(a)
            })();
            match r {
                Ok(a) if !a.is_empty() => {}
                Ok(_) => failures.push(format!("#{n}: empty answer")),
                Err(e) => failures.push(format!("#{n}: {e}")),
            }
            n += 1;
            // 50 connections per second.
            let next = Duration::from_millis(20) * n;
            if let Some(wait) = next.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        (n, failures)
    });
    std::thread::sleep(Duration::from_millis(800));
    c.nodes[0].kill_daemon().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    c.nodes[0].start_daemon().unwrap();
    let (n, failures) = load.join().unwrap();
    assert!(n >= 150, "the load ran: {n} connections");
    assert!(
        failures.is_empty(),
        "{} of {n} connections failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn twenty_thousand_services_are_programmed_and_the_first_and_last_answer() {
    let c = Cluster::new(ClusterOptions {
        nodes: 1,
        start_daemons: true,
    })
    .expect("cluster");
    let client = c.nodes[0].add_pod("tc").unwrap();
    let b = c.nodes[0].add_pod("tb").unwrap();
    let _w = b.serve_who("b").unwrap();
    let mut y = String::with_capacity(20_000 * 600);
    for i in 0..20_000u32 {
        let vip = format!("10.96.{}.{}", 100 + i / 250, 1 + i % 250);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: many}}\nspec: {{clusterIP: {vip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}, namespace: many, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [{}], conditions: {{ready: true}}}}]\n",
            b.ip
        );
    }
    publish(&c, "many.yaml", &y);
    let first = "10.96.100.1:80";
    let last = format!("10.96.{}.{}:80", 100 + 19_999 / 250, 1 + 19_999 % 250);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, metrics) = c.nodes[0].http_get("/metrics").unwrap();
        if metrics.lines().any(|l| l == "weir_service_frontends 20000") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20,000 services never programmed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for vip in [first.to_string(), last] {
        let (answer, peer) =
            tcp_who(&client.netns, vip.parse().unwrap()).unwrap_or_else(|e| panic!("{vip}: {e}"));
        assert_eq!(peer.to_string(), vip);
        assert!(answer.starts_with("b "), "{answer}");
    }
}
