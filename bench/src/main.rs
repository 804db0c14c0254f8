//! `weir-bench`: weir beside the incumbents, interleaved in one run. Run by
//! `cargo xtask bench [--quick]` (as root). Nothing here asserts a timing:
//! it measures and reports medians, spread and ratios.

mod cni;
mod latency;
mod pods;
mod report;
mod services;
mod stats;

use std::{fmt::Write as _, fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weir-bench",
    about = "weir's benchmarks, side by side with the incumbents"
)]
struct Cli {
    /// A short run (under five minutes on two cores).
    #[arg(long)]
    quick: bool,
    /// Run only these figures (1 CNI, 2 service programming, 3 connection
    /// latency, 4 pod to pod); all when not given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Where the report and charts go.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

fn machine_facts() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, Linux {kernel}, {date}")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let work = cli.out.join("work");
    fs::create_dir_all(&work)?;

    let wants = |n: u8| cli.only.is_empty() || cli.only.contains(&n);
    let (sizes, reps, updates): (Vec<usize>, usize, usize) = if cli.quick {
        (vec![500, 2_000], 2, 5)
    } else {
        (vec![1_000, 5_000, 10_000, 20_000], 3, 30)
    };

    let mut md = String::new();
    let _ = writeln!(md, "# weir benchmarks\n");
    let _ = writeln!(
        md,
        "Machine: {}. Command: `cargo xtask bench{}`. Every figure is measured beside its incumbent in the same run, interleaved; medians with (min–max) over the repetitions.\n",
        machine_facts(),
        if cli.quick { " --quick" } else { "" }
    );

    if wants(1) {
        let (pods, concurrency) = if cli.quick { (30, 10) } else { (100, 10) };
        eprintln!(
            "==> figure 1: CNI ADD/DEL, weir beside bridge + host-local ({pods} pods, sequential and at concurrency {concurrency})"
        );
        let cni_samples = cni::run(pods, concurrency)?;
        let _ = writeln!(md, "## CNI ADD and DEL: weir beside bridge + host-local\n");
        let _ = writeln!(
            md,
            "{pods} pods per plugin, interleaved pod by pod, then {concurrency} at a time; each a veth into a fresh namespace with one IPv4 address. Peak RSS is the largest of any single plugin process.\n"
        );
        md.push_str(&report::cni_markdown(&cni_samples));
    }
    if wants(4) {
        let (reps4, secs4, rr4) = if cli.quick {
            (2, 2, 2_000)
        } else {
            (3, 5, 10_000)
        };
        eprintln!("==> figure 4: pod-to-pod throughput and latency ({reps4} reps)");
        let pod_samples = pods::run(reps4, secs4, rr4)?;
        let _ = writeln!(
            md,
            "## Pod to pod: weir beside bridge and a bare veth (one node), and the bare underlay (two nodes)\n"
        );
        let _ = writeln!(
            md,
            "iperf3 for {secs4} s per repetition; {rr4} one-byte request/response round trips on one TCP connection.\n"
        );
        md.push_str(&report::pods_markdown(&pod_samples));
    }
    if wants(3) {
        let (sizes3, reps3, conns3): (Vec<usize>, usize, usize) = if cli.quick {
            (vec![1, 1_000], 2, 300)
        } else {
            (vec![1, 1_000, 20_000], 3, 2_000)
        };
        eprintln!("==> figure 3: connection latency to the last of N services ({sizes3:?})");
        let lat = latency::run(&sizes3, reps3, conns3, &work)?;
        let _ = writeln!(md, "## Connection latency to the last of N services\n");
        let _ = writeln!(
            md,
            "connect + one byte each way + close, {conns3} connections per repetition, {reps3} repetitions; weir's service maps against kube-proxy's iptables layout (iptables-nft) with the same services.\n"
        );
        md.push_str(&report::latency_markdown(&lat));
        report::latency_chart(&lat, &cli.out.join("latency.svg"))?;
        let _ = writeln!(md, "![latency against N](latency.svg)\n");
    }
    if wants(2) {
        eprintln!(
            "==> figure 2: service programming ({sizes:?} services x 8 backends, {reps} reps)"
        );
        let samples = services::run(&sizes, reps, updates, &work)?;
        let _ = writeln!(md, "## Service programming\n");
        md.push_str(&report::services_markdown(&samples));
        report::services_chart(
            &samples,
            "full",
            "Programming N services x 8 backends from empty",
            &cli.out.join("services-full.svg"),
        )?;
        report::services_chart(
            &samples,
            "one",
            "One service update at N services",
            &cli.out.join("services-one.svg"),
        )?;
        let _ = writeln!(
            md,
            "![programming from empty](services-full.svg)\n\n![one update](services-one.svg)\n"
        );
    }
    let report = cli.out.join("bench.md");
    fs::write(&report, &md)?;
    let _ = fs::remove_dir_all(&work);
    println!("{md}");
    eprintln!("==> report: {}", report.display());
    Ok(())
}
