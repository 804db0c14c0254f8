//! `weir-lab`: a weir cluster on this machine for people to look at (run by
//! `cargo xtask lab`). Two nodes (network namespaces running weir-node,
//! joined by an underlay bridge), three pods per node made by the real weir
//! binary, a host outside the cluster. It prints what works and stays up
//! until `weir-lab down`.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use weir_conformance::{
    cluster::{Cluster, ClusterOptions, Persisted, Pod},
    netns::NetNs,
};

#[derive(Parser)]
#[command(
    name = "weir-lab",
    about = "A weir cluster in network namespaces on this machine"
)]
struct Cli {
    /// Where the running lab is recorded.
    #[arg(long, default_value = "/run/weir-lab/state.json")]
    state: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the lab and print what works.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 3)]
        pods_per_node: usize,
    },
    /// Remove everything the lab made.
    Down,
    /// Say whether a lab is up.
    Status,
}

fn read_state(path: &Path) -> Result<Option<Persisted>> {
    match fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is not a lab state", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The average round-trip time of 3 pings, or None when one was lost.
fn rtt_ms(from: &NetNs, to: IpAddr) -> Option<f64> {
    let out = from
        .command("ping")
        .ok()?
        .args(["-n", "-q", "-c", "3", "-i", "0.05", "-W", "1"])
        .arg(to.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line.split('=').nth(1)?.trim();
    nums.split('/').nth(1)?.parse().ok()
}

fn pod_name(p: &Pod) -> String {
    format!(
        "n{}/{}",
        p.node,
        p.container_id.rsplit('-').next().unwrap_or("?")
    )
}

fn up(state: &Path, nodes: usize, pods_per_node: usize) -> Result<ExitCode> {
    if let Some(old) = read_state(state)? {
        if old.alive() {
            println!(
                "A lab is already up (id {}, namespaces {}). Inspect it as described when it started, or remove it with `cargo xtask lab down`.",
                old.id,
                old.netns.join(" ")
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "Removing the remains of a lab that is no longer running (id {}).",
            old.id
        );
        for p in old.teardown() {
            eprintln!("  {p}");
        }
        let _ = fs::remove_file(state);
    }

    println!("==> starting {nodes} nodes (weir-node in network namespaces on an underlay bridge)");
    let cluster = Cluster::new(ClusterOptions {
        nodes,
        start_daemons: true,
    })?;
    let mut pods = Vec::new();
    for node in &cluster.nodes {
        for k in 0..pods_per_node {
            pods.push(
                node.add_pod(&format!("{k}"))
                    .with_context(|| format!("ADD a pod on {}", node.name))?,
            );
        }
    }
    println!("==> {} pods made by the weir CNI binary\n", pods.len());
    for p in &pods {
        println!("  {:8} {:15} netns {}", pod_name(p), p.ip, p.netns.name());
    }

    println!("\n==> pod-to-pod connectivity (average RTT of 3 pings, ms)\n");
    let mut header = format!("{:>10}", "from \\ to");
    for p in &pods {
        header.push_str(&format!(" {:>9}", pod_name(p)));
    }
    println!("{header}");
    let mut failures = 0;
    for a in &pods {
        let mut row = format!("{:>10}", pod_name(a));
        for b in &pods {
            if a.container_id == b.container_id {
                row.push_str(&format!(" {:>9}", "-"));
                continue;
            }
            match rtt_ms(&a.netns, b.ip) {
                Some(ms) => row.push_str(&format!(" {ms:>9.3}")),
                None => {
                    failures += 1;
                    row.push_str(&format!(" {:>9}", "FAIL"));
                }
            }
        }
        println!("{row}");
    }

    println!(
        "\n==> pods to the host outside the cluster ({}, masqueraded to the node address)\n",
        cluster.outside_ip
    );
    for p in &pods {
        let r = rtt_ms(&p.netns, IpAddr::V4(cluster.outside_ip));
        if r.is_none() {
            failures += 1;
        }
        println!(
            "  {:8} -> outside: {}",
            pod_name(p),
            r.map(|ms| format!("{ms:.3} ms"))
                .unwrap_or_else(|| "FAIL".into())
        );
    }

    // Services: a ClusterIP and a NodePort over one pod per node, from the
    // manifest directory weir-node reads.
    let backends: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.container_id.ends_with('1'))
        .collect();
    let mut servers = Vec::new();
    for b in &backends {
        let child = b
            .netns
            .command("socat")?
            .arg("TCP-LISTEN:8080,fork,reuseaddr")
            .arg(format!("SYSTEM:echo {}", pod_name(b)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start socat (cargo xtask setup installs it)")?;
        servers.push(child.id());
    }
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: hello, namespace: lab}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: hello-a, namespace: lab, labels: {kubernetes.io/service-name: hello}}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for b in &backends {
        yaml.push_str(&format!(
            "- {{addresses: [{}], conditions: {{ready: true}}, nodeName: node-{}}}\n",
            b.ip, b.node
        ));
    }
    fs::write(cluster.nodes_dir.join("hello-service.yaml"), yaml)?;
    let vip: std::net::SocketAddr = "10.96.0.10:80".parse()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for node in &cluster.nodes {
        while !node
            .weir_node(&["bpf", "services", "list"])
            .is_ok_and(|t| t.contains("10.96.0.10:80") && t.contains(&format!("{}:30080", node.ip)))
        {
            if std::time::Instant::now() > deadline {
                failures += 1;
                println!("  {} did not program the service in time", node.name);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    let tally = |from: &NetNs, to: std::net::SocketAddr, n: usize| -> BTreeMap<String, usize> {
        let mut hits = BTreeMap::new();
        for _ in 0..n {
            let who = weir_conformance::cluster::tcp_who(from, to)
                .map(|(a, _)| a)
                .unwrap_or_else(|_| "FAIL".into());
            *hits.entry(who).or_insert(0) += 1;
        }
        hits
    };
    println!(
        "\n==> ClusterIP 10.96.0.10:80 from {} (30 connections), hits per backend\n",
        pod_name(&pods[0])
    );
    for (who, n) in tally(&pods[0].netns, vip, 30) {
        if who == "FAIL" {
            failures += n;
        }
        println!("  {who:10} {n}");
    }
    for node in &cluster.nodes {
        let to = std::net::SocketAddr::new(IpAddr::V4(node.ip), 30080);
        println!("\n==> NodePort {to} from the outside host (20 connections), hits per backend\n");
        for (who, n) in tally(&cluster.outside, to, 20) {
            if who == "FAIL" {
                failures += n;
            }
            println!("  {who:10} {n}");
        }
    }

    println!("\n==> counters from each node's /metrics (packets)\n");
    println!("  {:8} {:>10} {:>10}", "pod", "from pod", "to pod");
    for node in &cluster.nodes {
        let (_, metrics) = node.http_get("/metrics").unwrap_or_default();
        let mut per_pod: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for line in metrics
            .lines()
            .filter(|l| l.starts_with("weir_endpoint_packets_total{"))
        {
            let pod = line
                .split("pod=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("?")
                .to_string();
            let n: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let e = per_pod.entry(pod).or_default();
            if line.contains("direction=\"from_pod\"") {
                e.0 += n;
            } else {
                e.1 += n;
            }
        }
        for (pod, (from, to)) in per_pod {
            println!("  {:8} {from:>10} {to:>10}   ({})", pod, node.name);
        }
    }

    let first_pod = pods
        .first()
        .map(|p| p.netns.name().to_owned())
        .unwrap_or_default();
    let node0 = &cluster.nodes[0];
    let inspect = format!(
        // nsenter, not `ip netns exec`: the latter remounts /sys, hiding bpffs.
        "nsenter --net=/run/netns/{} target/release/weir-node --pin-root {} --node-json {} --endpoints-dir {}",
        node0.netns.name(),
        node0.layout.root().display(),
        node0.node_info_path().display(),
        node0.endpoints_dir().display()
    );
    let mut persisted = cluster.persist(pods);
    persisted.daemon_pids.extend(servers);
    if let Some(dir) = state.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(state, serde_json::to_vec_pretty(&persisted)?)?;

    println!("\n==> the lab stays up ({} problem(s) above)\n", failures);
    println!("  a shell in a pod:        ip netns exec {first_pod} sh");
    println!("  the maps of node-0:      {inspect} bpf endpoints list");
    println!("                           {inspect} bpf nodes list");
    println!("                           {inspect} bpf counters list");
    println!("                           {inspect} bpf services list");
    println!("                           {inspect} bpf ct list");
    println!("                           {inspect} status");
    println!(
        "  weir-node logs:          {}/node-*/weir-node.log",
        persisted.dir.display()
    );
    println!("  tear it down:            cargo xtask lab down");
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if std::env::var_os("WEIR_BIN").is_none() {
        let weir = weir_conformance::cluster::sibling_bin("weir")?;
        // SAFETY: set before any thread starts; nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var("WEIR_BIN", weir) };
    }
    match cli.command {
        Cmd::Up {
            nodes,
            pods_per_node,
        } => up(&cli.state, nodes, pods_per_node),
        Cmd::Down => {
            let Some(state) = read_state(&cli.state)? else {
                println!("No lab is up.");
                return Ok(ExitCode::SUCCESS);
            };
            let problems = state.teardown();
            fs::remove_file(&cli.state).ok();
            if problems.is_empty() {
                println!("The lab (id {}) is gone.", state.id);
                Ok(ExitCode::SUCCESS)
            } else {
                for p in &problems {
                    eprintln!("  {p}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Status => match read_state(&cli.state)? {
            Some(s) if s.alive() => {
                println!("A lab is up (id {}): {}", s.id, s.netns.join(" "));
                Ok(ExitCode::SUCCESS)
            }
            Some(s) => {
                println!(
                    "A lab was started (id {}) but its daemons are gone: `cargo xtask lab down` cleans up.",
                    s.id
                );
                Ok(ExitCode::FAILURE)
            }
            None => {
                println!("No lab is up.");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}
