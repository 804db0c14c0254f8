//! Figure 2: programming N services x 8 backends from empty, and one service
//! update, with weir's maps beside kube-proxy's iptables layout (restored
//! with iptables-legacy-restore and iptables-nft-restore) and its nftables
//! layout (nft -f). The incumbents run inside a network namespace of their
//! own, so the machine's tables are never touched; the systems are
//! interleaved within each repetition.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use weir_datapath::{
    PinLayout, bpffs, loader, object,
    services::{BackendAddr, Frontend, ServiceMaps, ServiceSpec},
};

pub const BACKENDS_PER_SERVICE: usize = 8;

/// The systems measured, in the order they are interleaved.
pub const SYSTEMS: [&str; 4] = ["weir", "iptables-legacy", "iptables-nft", "nftables"];

#[derive(Clone, Debug)]
pub struct Sample {
    pub system: &'static str,
    pub services: usize,
    /// "full" (from empty) or "one" (a single service update).
    pub op: &'static str,
    pub seconds: f64,
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i >> 8) as u8, i as u8)
}

fn endpoint(i: usize, j: usize, generation: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, (1 + j + generation * 16) as u8, (i >> 8) as u8, i as u8)
}

/// A network namespace removed on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Result<Netns> {
        let name = format!("wb-{}-{tag}", std::process::id());
        let st = Command::new("ip").args(["netns", "add", &name]).status()?;
        if !st.success() {
            bail!("ip netns add {name} failed");
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `cmd args < input` inside the namespace and returns its wall time.
fn timed_in_netns(ns: &Netns, cmd: &str, args: &[&str], input: &Path) -> Result<f64> {
    let file = fs::File::open(input)?;
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, cmd])
        .args(args)
        .stdin(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

fn chain_id(i: usize) -> String {
    format!("{i:016X}")
}

/// kube-proxy's iptables layout for services `0..n`.
pub fn iptables_rules(n: usize) -> String {
    let mut s = String::with_capacity(n * 1400);
    s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    s.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    for i in 0..n {
        let _ = writeln!(s, ":KUBE-SVC-{} - [0:0]", chain_id(i));
        for j in 0..BACKENDS_PER_SERVICE {
            let _ = writeln!(s, ":KUBE-SEP-{}{j} - [0:0]", &chain_id(i)[1..]);
        }
    }
    s.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    s.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    s.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    s.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    s.push_str("-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n");
    for i in 0..n {
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{}",
            vip(i),
            chain_id(i)
        );
        s.push_str(&iptables_service_chains(i, 0));
    }
    s.push_str("COMMIT\n");
    s
}

fn iptables_service_chains(i: usize, generation: usize) -> String {
    let mut s = String::new();
    let id = chain_id(i);
    for j in 0..BACKENDS_PER_SERVICE {
        let left = BACKENDS_PER_SERVICE - j;
        if left > 1 {
            let _ = writeln!(
                s,
                "-A KUBE-SVC-{id} -m comment --comment \"default/svc-{i}:http -> {}:8080\" -m statistic --mode random --probability {:.10} -j KUBE-SEP-{}{j}",
                endpoint(i, j, generation),
                1.0 / left as f64,
                &id[1..]
            );
        } else {
            let _ = writeln!(
                s,
                "-A KUBE-SVC-{id} -m comment --comment \"default/svc-{i}:http -> {}:8080\" -j KUBE-SEP-{}{j}",
                endpoint(i, j, generation),
                &id[1..]
            );
        }
    }
    for j in 0..BACKENDS_PER_SERVICE {
        let e = endpoint(i, j, generation);
        let _ = writeln!(
            s,
            "-A KUBE-SEP-{}{j} -s {e}/32 -m comment --comment \"default/svc-{i}:http\" -j KUBE-MARK-MASQ",
            &id[1..]
        );
        let _ = writeln!(
            s,
            "-A KUBE-SEP-{}{j} -p tcp -m comment --comment \"default/svc-{i}:http\" -m tcp -j DNAT --to-destination {e}:8080",
            &id[1..]
        );
    }
    s
}

/// One service's chains rewritten, for `iptables-restore --noflush`: the
/// chain declarations flush them, then their rules follow.
pub fn iptables_one_update(i: usize, generation: usize) -> String {
    let mut s = String::from("*nat\n");
    let id = chain_id(i);
    let _ = writeln!(s, ":KUBE-SVC-{id} - [0:0]");
    for j in 0..BACKENDS_PER_SERVICE {
        let _ = writeln!(s, ":KUBE-SEP-{}{j} - [0:0]", &id[1..]);
    }
    s.push_str(&iptables_service_chains(i, generation));
    s.push_str("COMMIT\n");
    s
}

/// kube-proxy's nftables layout for services `0..n`.
pub fn nft_rules(n: usize) -> String {
    let mut s = String::with_capacity(n * 1200);
    s.push_str("add table ip kube-proxy\n");
    s.push_str("add chain ip kube-proxy mark-for-masquerade\n");
    s.push_str("add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000\n");
    s.push_str("add chain ip kube-proxy services\n");
    s.push_str("add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n");
    s.push_str(
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips\n",
    );
    s.push_str(
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat ; }\n",
    );
    s.push_str("add rule ip kube-proxy nat-prerouting jump services\n");
    s.push_str("add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }\n");
    s.push_str("add rule ip kube-proxy nat-output jump services\n");
    for i in 0..n {
        s.push_str(&nft_service(i, 0, true));
        let _ = writeln!(
            s,
            "add element ip kube-proxy service-ips {{ {} . tcp . 80 : goto service-{} }}",
            vip(i),
            chain_id(i)
        );
    }
    s
}

fn nft_service(i: usize, generation: usize, declare: bool) -> String {
    let mut s = String::new();
    let id = chain_id(i);
    if declare {
        let _ = writeln!(s, "add chain ip kube-proxy service-{id}");
        for j in 0..BACKENDS_PER_SERVICE {
            let _ = writeln!(s, "add chain ip kube-proxy endpoint-{id}-{j}");
        }
    }
    let mut vmap = String::new();
    for j in 0..BACKENDS_PER_SERVICE {
        if j > 0 {
            vmap.push_str(", ");
        }
        let _ = write!(vmap, "{j} : goto endpoint-{id}-{j}");
    }
    let _ = writeln!(
        s,
        "add rule ip kube-proxy service-{id} numgen random mod {BACKENDS_PER_SERVICE} vmap {{ {vmap} }}"
    );
    for j in 0..BACKENDS_PER_SERVICE {
        let e = endpoint(i, j, generation);
        let _ = writeln!(
            s,
            "add rule ip kube-proxy endpoint-{id}-{j} ip saddr {e} jump mark-for-masquerade"
        );
        let _ = writeln!(
            s,
            "add rule ip kube-proxy endpoint-{id}-{j} meta l4proto tcp dnat to {e}:8080"
        );
    }
    s
}

/// One service's chains flushed and rewritten.
pub fn nft_one_update(i: usize, generation: usize) -> String {
    let mut s = String::new();
    let id = chain_id(i);
    let _ = writeln!(s, "flush chain ip kube-proxy service-{id}");
    for j in 0..BACKENDS_PER_SERVICE {
        let _ = writeln!(s, "flush chain ip kube-proxy endpoint-{id}-{j}");
    }
    s.push_str(&nft_service(i, generation, false));
    s
}

fn weir_spec(i: usize, generation: usize) -> (Frontend, ServiceSpec) {
    (
        Frontend::cluster_ip(IpAddr::V4(vip(i)), 80, 6),
        ServiceSpec {
            id: i as u32 + 1,
            backends: (0..BACKENDS_PER_SERVICE)
                .map(|j| BackendAddr {
                    ip: IpAddr::V4(endpoint(i, j, generation)),
                    port: 8080,
                })
                .collect(),
            affinity_timeout_s: None,
        },
    )
}

/// A pin directory removed on drop.
struct Pins(PinLayout);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = loader::unpin_all(&self.0);
    }
}

fn bench_weir(n: usize, updates: usize, out: &mut Vec<Sample>) -> Result<()> {
    bpffs::ensure_mounted(Path::new("/sys/fs/bpf"))?;
    let pins = Pins(PinLayout::new(format!(
        "/sys/fs/bpf/weir-bench-{}-{n}",
        std::process::id()
    )));
    loader::unpin_all(&pins.0)?;
    loader::load(&pins.0, object::OBJECT)?;
    let mut maps = ServiceMaps::open(&pins.0)?;
    let specs: Vec<(Frontend, ServiceSpec)> = (0..n).map(|i| weir_spec(i, 0)).collect();
    let started = Instant::now();
    for (f, s) in &specs {
        maps.upsert(f, s)?;
    }
    out.push(Sample {
        system: "weir",
        services: n,
        op: "full",
        seconds: started.elapsed().as_secs_f64(),
    });
    for u in 0..updates {
        let (f, s) = weir_spec(n - 1, 1 + u % 2);
        let started = Instant::now();
        maps.upsert(&f, &s)?;
        out.push(Sample {
            system: "weir",
            services: n,
            op: "one",
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(())
}

fn bench_iptables(
    system: &'static str,
    restore: &str,
    n: usize,
    updates: usize,
    dir: &Path,
    out: &mut Vec<Sample>,
) -> Result<()> {
    let ns = Netns::new(system)?;
    let full = dir.join(format!("iptables-{n}.rules"));
    if !full.exists() {
        fs::write(&full, iptables_rules(n))?;
    }
    let secs = timed_in_netns(&ns, restore, &[], &full)?;
    out.push(Sample {
        system,
        services: n,
        op: "full",
        seconds: secs,
    });
    for u in 0..updates {
        let one = dir.join(format!("iptables-one-{n}-{}.rules", u % 2));
        fs::write(&one, iptables_one_update(n - 1, 1 + u % 2))?;
        let secs = timed_in_netns(&ns, restore, &["--noflush"], &one)?;
        out.push(Sample {
            system,
            services: n,
            op: "one",
            seconds: secs,
        });
    }
    Ok(())
}

fn bench_nft(n: usize, updates: usize, dir: &Path, out: &mut Vec<Sample>) -> Result<()> {
    let ns = Netns::new("nft")?;
    let full = dir.join(format!("nft-{n}.nft"));
    if !full.exists() {
        fs::write(&full, nft_rules(n))?;
    }
    let secs = timed_in_netns(&ns, "nft", &["-f", "-"], &full)?;
    out.push(Sample {
        system: "nftables",
        services: n,
        op: "full",
        seconds: secs,
    });
    for u in 0..updates {
        let one = dir.join(format!("nft-one-{n}-{}.nft", u % 2));
        let mut f = fs::File::create(&one)?;
        f.write_all(nft_one_update(n - 1, 1 + u % 2).as_bytes())?;
        drop(f);
        let secs = timed_in_netns(&ns, "nft", &["-f", "-"], &one)?;
        out.push(Sample {
            system: "nftables",
            services: n,
            op: "one",
            seconds: secs,
        });
    }
    Ok(())
}

/// Runs figure 2 for every size, `reps` times, the systems interleaved.
pub fn run(sizes: &[usize], reps: usize, updates: usize, workdir: &Path) -> Result<Vec<Sample>> {
    let dir: PathBuf = workdir.join("rules");
    // Rule files are generated once per run (outside the timed part).
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for &n in sizes {
        for rep in 0..reps {
            // Rotate the starting system so none always runs first.
            for k in 0..SYSTEMS.len() {
                let system = SYSTEMS[(k + rep) % SYSTEMS.len()];
                eprintln!("  services: {system} N={n} rep {}/{reps}", rep + 1);
                match system {
                    "weir" => bench_weir(n, updates, &mut out)?,
                    "iptables-legacy" => bench_iptables(
                        system,
                        "iptables-legacy-restore",
                        n,
                        updates,
                        &dir,
                        &mut out,
                    )?,
                    "iptables-nft" => {
                        bench_iptables(system, "iptables-nft-restore", n, updates, &dir, &mut out)?
                    }
                    _ => bench_nft(n, updates, &dir, &mut out)?,
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iptables_layout_fans_out_with_falling_probabilities() {
        let rules = iptables_rules(2);
        assert_eq!(rules.matches("-A KUBE-SERVICES -d ").count(), 2);
        assert_eq!(rules.matches("-j DNAT --to-destination").count(), 16);
        assert!(rules.contains("--probability 0.1250000000"));
        assert!(rules.contains("--probability 0.5000000000"));
        assert!(rules.trim_end().ends_with("COMMIT"));
        let one = iptables_one_update(1, 1);
        assert_eq!(one.matches("DNAT").count(), 8);
        assert!(
            !one.contains("KUBE-SERVICES"),
            "an update touches only the service's chains"
        );
    }

    #[test]
    fn the_nft_layout_uses_a_verdict_map_per_frontend() {
        let rules = nft_rules(3);
        assert_eq!(
            rules
                .matches("add element ip kube-proxy service-ips")
                .count(),
            3
        );
        assert_eq!(rules.matches("numgen random mod 8").count(), 3);
        let one = nft_one_update(2, 1);
        assert!(one.starts_with("flush chain ip kube-proxy service-"));
        assert_eq!(one.matches("dnat to").count(), 8);
    }
}
