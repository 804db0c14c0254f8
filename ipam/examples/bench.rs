//! Benchmark (not a test): allocate + release one address on a /16 with
//! 60,000 addresses already allocated, beside Debian's `host-local` doing
//! the same work on the same number of reservations.
//!
//! ```text
//! cargo run --release -p weir-ipam --example bench -- --dir /var/tmp/weir-bench [--host-local /usr/lib/cni/host-local]
//! ```
//!
//! weir is measured as the library call the CNI makes (`allocate` then
//! `release`, each with its fsyncs); host-local as the two processes a
//! runtime execs (ADD then DEL), since that is the only way it runs. Peak
//! RSS: this process's VmHWM for weir (populating included), GNU time's
//! maximum resident size of one host-local ADD or DEL.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use weir_ipam::{Allocation, DiskStore, Ipam, Key, Pool, RangeConfig};

#[derive(Parser)]
struct Args {
    /// Scratch directory (wiped). Put it on the file system to measure.
    #[arg(long)]
    dir: PathBuf,
    /// Addresses allocated before measuring.
    #[arg(long, default_value_t = 60_000)]
    held: u32,
    /// Measured allocate+release pairs for weir.
    #[arg(long, default_value_t = 2000)]
    ops: u32,
    /// Debian's host-local binary, to measure beside weir.
    #[arg(long)]
    host_local: Option<PathBuf>,
    /// Measured ADD+DEL pairs for host-local.
    #[arg(long, default_value_t = 200)]
    host_local_ops: u32,
}

const SUBNET: &str = "10.128.0.0/16";

fn main() -> Result<()> {
    let args = Args::parse();
    if args.dir.exists() {
        fs::remove_dir_all(&args.dir).with_context(|| format!("wiping {}", args.dir.display()))?;
    }
    fs::create_dir_all(&args.dir)?;
    println!(
        "{} reserved of {SUBNET} (65534), state in {}",
        args.held,
        args.dir.display()
    );
    weir(&args)?;
    if let Some(bin) = &args.host_local {
        host_local(&args, bin)?;
    }
    Ok(())
}

fn nth(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i))
}

fn weir(args: &Args) -> Result<()> {
    let pool = Pool::from_config(&[vec![RangeConfig {
        subnet: SUBNET.into(),
        range_start: None,
        range_end: None,
        gateway: None,
    }]])?;
    let dir = args.dir.join("weir");
    // Populate through the layout's own path helpers and types, but without
    // a fsync per file (60,000 of them would take many minutes on a disk);
    // one sync at the end.
    let store = DiskStore::open(&dir)?;
    let started = Instant::now();
    for i in 0..args.held {
        let key = Key::new(format!("pre{i:08}"), "eth0");
        let ip = nth(i);
        fs::write(store.ip_path(ip), serde_json::to_vec(&key)?)?;
        let record = Allocation {
            key: key.clone(),
            ips: vec![pool.describe(ip)],
            labels: BTreeMap::new(),
        };
        fs::write(store.record_path(&key), serde_json::to_vec_pretty(&record)?)?;
    }
    fs::write(
        store.last_reserved_path(0),
        format!("{}\n", nth(args.held - 1)),
    )?;
    Command::new("sync").status()?;
    println!("weir: populated in {:?}", started.elapsed());

    let ipam = Ipam::open(&dir, pool)?;
    if ipam.status()?.sets[0].allocated != u128::from(args.held) {
        bail!("populating went wrong: {:?}", ipam.status()?);
    }
    let labels = BTreeMap::new();
    let (mut alloc, mut release, mut both) = (Vec::new(), Vec::new(), Vec::new());
    let (mut undisturbed, mut preempted) = (Vec::new(), 0);
    for i in 0..args.ops {
        let key = Key::new(format!("bench{i:08}"), "eth0");
        let r0 = thread_usage();
        let t0 = Instant::now();
        ipam.allocate(&key, &labels)?;
        let t1 = Instant::now();
        if ipam.release(&key)?.is_none() {
            bail!("{key} held nothing");
        }
        let t2 = Instant::now();
        let r1 = thread_usage();
        alloc.push(t1 - t0);
        release.push(t2 - t1);
        both.push(t2 - t0);
        if r1 > r0 {
            preempted += 1;
        } else {
            undisturbed.push(t2 - t0);
        }
    }
    report("weir allocate", &mut alloc);
    report("weir release", &mut release);
    report("weir allocate+release", &mut both);
    // On a busy machine the wall-clock tail is mostly waiting for a CPU:
    // say how often that happened, and what the others took.
    println!(
        "weir: {preempted} of {} pairs were preempted (involuntary context switch)",
        args.ops
    );
    if !undisturbed.is_empty() {
        report("weir a+r, not preempted", &mut undisturbed);
    }
    println!("weir peak RSS: {} KiB (this process)", vm_hwm_kib()?);
    Ok(())
}

fn host_local(args: &Args, bin: &Path) -> Result<()> {
    let data = args.dir.join("host-local");
    let net = data.join("bench");
    fs::create_dir_all(&net)?;
    // host-local's disk format: one file per address holding
    // "<container id>\r\n<ifname>", and last_reserved_ip.<range set>.
    let started = Instant::now();
    for i in 0..args.held {
        fs::write(net.join(nth(i).to_string()), format!("pre{i:08}\r\neth0"))?;
    }
    fs::write(
        net.join("last_reserved_ip.0"),
        nth(args.held - 1).to_string(),
    )?;
    Command::new("sync").status()?;
    println!("host-local: populated in {:?}", started.elapsed());

    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "bench",
        "type": "bench",
        "ipam": { "type": "host-local", "dataDir": data, "ranges": [[{ "subnet": SUBNET }]] },
    })
    .to_string();
    let run = |command: &str, id: &str| -> Result<Duration> {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/var/run/netns/bench")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        let elapsed = t0.elapsed();
        if !out.status.success() {
            bail!(
                "host-local {command}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(elapsed)
    };
    let (mut add, mut del, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.host_local_ops {
        let id = format!("bench{i:08}");
        let a = run("ADD", &id)?;
        let d = run("DEL", &id)?;
        add.push(a);
        del.push(d);
        both.push(a + d);
    }
    report("host-local ADD (exec)", &mut add);
    report("host-local DEL (exec)", &mut del);
    report("host-local ADD+DEL (exec)", &mut both);
    // ru_maxrss of a child spawned with vfork starts at the parent's RSS,
    // so the peak comes from GNU time around one more ADD and DEL.
    let mut peak = 0u64;
    for command in ["ADD", "DEL"] {
        let out = args.dir.join("time.out");
        let mut child = Command::new("/usr/bin/time")
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&out)
            .arg(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "rss")
            .env("CNI_NETNS", "/var/run/netns/bench")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("running /usr/bin/time")?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.as_bytes())?;
        child.wait()?;
        let kib: u64 = fs::read_to_string(&out)?
            .trim()
            .parse()
            .context("GNU time's %M")?;
        peak = peak.max(kib);
    }
    println!("host-local peak RSS: {peak} KiB (one ADD or DEL process, GNU time)");
    Ok(())
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what:<28} n={:<5} p50 {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}

/// This thread's involuntary context switches so far.
fn thread_usage() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD is the
    // calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_THREAD)");
    // SAFETY: initialised by the successful call above.
    unsafe { usage.assume_init() }.ru_nivcsw
}

fn vm_hwm_kib() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}
