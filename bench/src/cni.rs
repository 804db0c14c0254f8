//! Figure 1: CNI ADD and DEL, `weir` beside Debian's `bridge` + `host-local`
//! on the same kind of pods (a veth into a fresh namespace, one IPv4
//! address), sequentially and at concurrency 10, interleaved pod by pod.
//! Each plugin runs in a node namespace of its own; peak RSS is read from
//! the kernel's accounting of each exited plugin process (`wait4`).

use std::{io::Write, path::PathBuf, time::Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weir_conformance::{
    cni::{self, DEBIAN_PLUGIN_DIR, Invocation},
    netns::NetNs,
    node::{NodeOptions, TestNode},
    random_hex,
};

#[derive(Clone, Debug)]
pub struct Sample {
    pub plugin: &'static str,
    /// "ADD" or "DEL".
    pub op: &'static str,
    /// 1 (sequential) or the concurrency.
    pub concurrency: usize,
    pub seconds: f64,
    /// Peak resident set of the plugin process, KiB.
    pub max_rss_kib: u64,
}

/// Runs one plugin invocation and returns (wall seconds, peak RSS KiB).
fn timed(plugin: &std::path::Path, inv: &Invocation, host: &NetNs) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut child = cni::command(plugin, inv, Some(host))?
        .spawn()
        .context("spawn plugin")?;
    let body = serde_json::to_vec(&inv.config)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body)?;
    }
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut out)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our child's and has not been reaped.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{} {} failed: {}",
            plugin.display(),
            inv.command,
            String::from_utf8_lossy(&out)
        );
    }
    Ok((seconds, usage.ru_maxrss as u64))
}

struct Contender {
    name: &'static str,
    plugin: PathBuf,
    config: Value,
    /// weir's node: its namespace is where weir runs; it owns pins and state.
    node: Option<TestNode>,
    /// bridge's node namespace and state directory.
    own_host: Option<NetNs>,
    dir: Option<PathBuf>,
}

impl Contender {
    /// The node namespace the plugin runs in.
    fn host(&self) -> &NetNs {
        match (&self.node, &self.own_host) {
            (Some(n), _) => &n.netns,
            (None, Some(h)) => h,
            (None, None) => unreachable!("a contender always has a host namespace"),
        }
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn weir() -> Result<Contender> {
    let node = TestNode::new(NodeOptions {
        pod_cidrs: vec!["10.77.0.0/16".parse()?],
        ..NodeOptions::default()
    })?;
    Ok(Contender {
        name: "weir",
        plugin: node.bin.clone(),
        config: node.config("1.0.0"),
        node: Some(node),
        own_host: None,
        dir: None,
    })
}

fn bridge() -> Result<Contender> {
    let dir = std::env::temp_dir().join(format!("weir-bench-bridge-{}", random_hex(6)));
    std::fs::create_dir_all(&dir)?;
    let config = json!({
        "cniVersion": "1.0.0",
        "name": "benchbridge",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/16"}]],
            "dataDir": dir.join("ipam"),
        }
    });
    Ok(Contender {
        name: "bridge",
        plugin: PathBuf::from(DEBIAN_PLUGIN_DIR).join("bridge"),
        config,
        node: None,
        own_host: Some(NetNs::new(&format!("wbb{}", random_hex(6)))?),
        dir: Some(dir),
    })
}

fn invocation(
    c: &Contender,
    command: &str,
    cid: &str,
    pod: &NetNs,
    prev: Option<&Value>,
) -> Invocation {
    let mut inv = Invocation::new(
        command,
        cid,
        &pod.path().display().to_string(),
        "eth0",
        c.config.clone(),
    );
    inv.args = cni::kubernetes_args("bench", cid, cid);
    if let Some(p) = prev {
        inv.config["prevResult"] = p.clone();
    }
    inv
}

/// Figure 1 over `pods` pods per plugin, sequential then at `concurrency`.
pub fn run(pods: usize, concurrency: usize) -> Result<Vec<Sample>> {
    let weir = weir()?;
    let bridge = bridge()?;
    let contenders = [&weir, &bridge];
    let mut out = Vec::new();

    // Sequential: pod by pod, the two plugins alternating (and swapping who
    // goes first).
    let mut made: Vec<(usize, String, NetNs)> = Vec::new();
    for i in 0..pods {
        for k in 0..2 {
            let c = contenders[(i + k) % 2];
            let ci = (i + k) % 2;
            let cid = format!("b{}{i}{}", c.name, random_hex(4));
            let pod = NetNs::new(&format!("wbp{}", random_hex(8)))?;
            let (s, rss) = timed(&c.plugin, &invocation(c, "ADD", &cid, &pod, None), c.host())?;
            out.push(Sample {
                plugin: c.name,
                op: "ADD",
                concurrency: 1,
                seconds: s,
                max_rss_kib: rss,
            });
            made.push((ci, cid, pod));
        }
    }
    for (ci, cid, pod) in &made {
        let c = contenders[*ci];
        let (s, rss) = timed(&c.plugin, &invocation(c, "DEL", cid, pod, None), c.host())?;
        out.push(Sample {
            plugin: c.name,
            op: "DEL",
            concurrency: 1,
            seconds: s,
            max_rss_kib: rss,
        });
    }
    drop(made);

    // Concurrent: `concurrency` threads, each adding then deleting its share.
    for c in contenders {
        let per_thread = pods.div_ceil(concurrency);
        let results: Vec<Result<Vec<Sample>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..concurrency)
                .map(|t| {
                    s.spawn(move || -> Result<Vec<Sample>> {
                        let mut local = Vec::new();
                        let mut mine = Vec::new();
                        for i in 0..per_thread {
                            let cid = format!("c{}{t}x{i}{}", c.name, random_hex(4));
                            let pod = NetNs::new(&format!("wbq{}", random_hex(8)))?;
                            let (sec, rss) = timed(
                                &c.plugin,
                                &invocation(c, "ADD", &cid, &pod, None),
                                c.host(),
                            )?;
                            local.push(Sample {
                                plugin: c.name,
                                op: "ADD",
                                concurrency,
                                seconds: sec,
                                max_rss_kib: rss,
                            });
                            mine.push((cid, pod));
                        }
                        for (cid, pod) in &mine {
                            let (sec, rss) =
                                timed(&c.plugin, &invocation(c, "DEL", cid, pod, None), c.host())?;
                            local.push(Sample {
                                plugin: c.name,
                                op: "DEL",
                                concurrency,
                                seconds: sec,
                                max_rss_kib: rss,
                            });
                        }
                        Ok(local)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("bench thread panicked")))
                })
                .collect()
        });
        for r in results {
            out.extend(r?);
        }
    }
    Ok(out)
}
