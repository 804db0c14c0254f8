//! `weir-ipam`: inspect and repair weir's IPAM state.
//!
//! ```text
//! weir-ipam [--dir /var/lib/weir/ipam/weir] list [-o json]
//! weir-ipam show <container-id> [--ifname eth0] [-o json]
//! weir-ipam release <container-id> [--ifname eth0]
//! weir-ipam gc (--keep <container-id>/<ifname>)... | --keep-none
//! weir-ipam check [-o json]
//! weir-ipam --cidr 10.244.1.0/24 --cidr fd00::/64 status [-o json]
//! ```
//!
//! Every command takes the same lock as the CNI, so it is safe on a live
//! node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;
use serde::Serialize;
use weir_ipam::{Allocation, Ipam, Key, Pool, RangeConfig};

#[derive(Parser)]
#[command(name = "weir-ipam", about = "Inspect and repair weir's IPAM state")]
struct Cli {
    /// The network's state directory.
    #[arg(long, global = true, default_value = "/var/lib/weir/ipam/weir")]
    dir: PathBuf,
    /// The pool, as pod CIDRs (one range set each). Needed by `status`;
    /// elsewhere it only tells which reservations are outside the pool.
    #[arg(long, global = true, conflicts_with = "ranges")]
    cidr: Vec<IpNetwork>,
    /// The pool, as the network config's `ipam.ranges` JSON.
    #[arg(long, global = true)]
    ranges: Option<String>,
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Every allocation.
    List,
    /// One container's allocation.
    Show {
        container_id: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Free one container's addresses.
    Release {
        container_id: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Free everything but the given keys.
    Gc {
        /// A key to keep, as <container-id>/<ifname>.
        #[arg(long, value_parser = parse_key)]
        keep: Vec<Key>,
        /// Keep nothing: free every allocation.
        #[arg(long, conflicts_with = "keep")]
        keep_none: bool,
    },
    /// Cross-check reservations and records; exits 1 on a leak.
    Check,
    /// How full each range set is.
    Status,
}

fn parse_key(s: &str) -> Result<Key, String> {
    match s.rsplit_once('/') {
        Some((cid, ifname)) if !cid.is_empty() && !ifname.is_empty() => Ok(Key::new(cid, ifname)),
        _ => Err(format!("{s:?} is not <container-id>/<ifname>")),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir-ipam: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let pool = match (&cli.ranges, cli.cidr.is_empty()) {
        (Some(json), _) => {
            let ranges: Vec<Vec<RangeConfig>> =
                serde_json::from_str(json).context("parsing --ranges")?;
            Some(Pool::from_config(&ranges)?)
        }
        (None, false) => Some(Pool::from_cidrs(&cli.cidr)?),
        (None, true) => None,
    };
    if matches!(cli.command, Command::Status) && pool.is_none() {
        bail!("status needs the pool: pass --cidr or --ranges");
    }
    let have_pool = pool.is_some();
    // Without a pool, one that holds every address: nothing is "outside".
    let pool = match pool {
        Some(pool) => pool,
        None => Pool::from_cidrs(&["0.0.0.0/0".parse()?, "::/0".parse()?])?,
    };
    if !cli.dir.is_dir() {
        bail!("{} is not a weir IPAM state directory", cli.dir.display());
    }
    let ipam = Ipam::open(&cli.dir, pool)?;
    let json = cli.output == Output::Json;

    match cli.command {
        Command::List => print_allocations(json, &ipam.list()?)?,
        Command::Show {
            container_id,
            ifname,
        } => match ipam.get(&Key::new(container_id, ifname))? {
            Some(a) => print_allocations(json, &[a])?,
            None => {
                eprintln!("no allocation");
                return Ok(ExitCode::FAILURE);
            }
        },
        Command::Release {
            container_id,
            ifname,
        } => {
            let freed = ipam.release(&Key::new(container_id, ifname))?;
            print_allocations(json, freed.as_slice())?;
        }
        Command::Gc { keep, keep_none } => {
            if keep.is_empty() && !keep_none {
                bail!(
                    "gc frees everything not kept: pass --keep <container-id>/<ifname> or --keep-none"
                );
            }
            print_allocations(json, &ipam.gc(&keep)?)?;
        }
        Command::Check => {
            let report = ipam.check()?;
            if json {
                print_json(&report)?;
            } else {
                for (ip, key) in &report.orphans {
                    println!(
                        "orphan      {ip}  held by {key}, whose record does not list it (gc frees it)"
                    );
                }
                for (key, ip) in &report.dangling {
                    println!(
                        "dangling    {ip}  listed by {key} but not reserved for it (harmless)"
                    );
                }
                if have_pool {
                    for (ip, key) in &report.outside_pool {
                        println!("outside     {ip}  held by {key}, outside the pool");
                    }
                }
                if report.orphans.is_empty() && report.dangling.is_empty() {
                    println!("ok");
                }
            }
            if !report.is_clean() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Status => {
            let status = ipam.status()?;
            if json {
                print_json(&StatusJson {
                    can_allocate: status.can_allocate(),
                    sets: &status.sets,
                })?;
            } else {
                for s in &status.sets {
                    println!(
                        "{:>8} of {:<8} allocated  {}",
                        s.allocated, s.capacity, s.description
                    );
                }
                println!("can allocate: {}", status.can_allocate());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson<'a> {
    can_allocate: bool,
    sets: &'a [weir_ipam::RangeSetStatus],
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_allocations(json: bool, list: &[Allocation]) -> Result<()> {
    if json {
        return print_json(&list);
    }
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|a| {
            [
                a.key.container_id.clone(),
                a.key.ifname.clone(),
                a.ips
                    .iter()
                    .map(|ip| ip.address.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                labels(&a.labels),
            ]
        })
        .collect();
    let header = ["CONTAINER ID", "IFNAME", "ADDRESSES", "LABELS"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
