//! Test helper for weir-ipam's cross-process tests (`tests/processes.rs`):
//! one worker that allocates and releases in a loop on a shared state dir.
//!
//! ```text
//! weir-ipam-stress --dir DIR --ranges JSON --worker N [--cycles C] [--hold H] [--claims DIR]
//! ```
//!
//! Each cycle allocates key `w<N>-<i>/eth0`, checks it (one address per
//! range set, `get` agrees), and releases the key allocated `H` cycles
//! earlier. With `--claims`, every address handed out is also claimed with
//! an exclusive create of `<claims>/<ip>` while it is held, so an address
//! handed to two holders at once is caught in the act (exit 2). `--cycles 0`
//! loops until killed. Prints `ready` once the state is open.

use std::collections::{BTreeMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use weir_ipam::{Allocation, Ipam, Key, Pool, RangeConfig};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: PathBuf,
    /// The range sets, as the config's `ipam.ranges` JSON.
    #[arg(long)]
    ranges: String,
    #[arg(long)]
    worker: u32,
    /// 0: until killed.
    #[arg(long, default_value_t = 200)]
    cycles: u64,
    /// How many allocations to keep before releasing the oldest.
    #[arg(long, default_value_t = 1)]
    hold: usize,
    #[arg(long)]
    claims: Option<PathBuf>,
}

/// Exit status for an address held twice.
const DUPLICATE: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(duplicate)) => {
            eprintln!("worker {}: DUPLICATE: {duplicate}", args.worker);
            ExitCode::from(DUPLICATE)
        }
        Err(e) => {
            eprintln!("worker {}: {e:#}", args.worker);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Option<String>> {
    let ranges: Vec<Vec<RangeConfig>> =
        serde_json::from_str(&args.ranges).context("parsing --ranges")?;
    let pool = Pool::from_config(&ranges)?;
    let sets = pool.sets().len();
    let ipam = Ipam::open(&args.dir, pool)?;
    println!("ready");
    std::io::stdout().flush()?;

    let labels = BTreeMap::from([("worker".to_string(), args.worker.to_string())]);
    let mut held: VecDeque<Allocation> = VecDeque::new();
    let mut i = 0u64;
    while args.cycles == 0 || i < args.cycles {
        let key = Key::new(format!("w{}-{i}", args.worker), "eth0");
        let a = ipam.allocate(&key, &labels)?;
        if a.ips.len() != sets {
            bail!("{key}: {} addresses for {sets} range sets", a.ips.len());
        }
        if let Some(claims) = &args.claims {
            for ip in &a.ips {
                if !claim(claims, &ip.address.ip().to_string(), &key)? {
                    return Ok(Some(format!(
                        "{} handed to {key} while claimed",
                        ip.address
                    )));
                }
            }
        }
        let again = ipam.get(&key)?;
        if again.as_ref() != Some(&a) {
            bail!("{key}: allocate gave {a:?}, get gives {again:?}");
        }
        held.push_back(a);
        while held.len() > args.hold {
            let old = held.pop_front().expect("not empty");
            release(&ipam, args.claims.as_deref(), &old)?;
        }
        i += 1;
    }
    while let Some(old) = held.pop_front() {
        release(&ipam, args.claims.as_deref(), &old)?;
    }
    Ok(None)
}

fn claim(claims: &Path, ip: &str, key: &Key) -> Result<bool> {
    let path = claims.join(ip);
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => {
            writeln!(f, "{key}")?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("claiming {}", path.display())),
    }
}

fn release(ipam: &Ipam, claims: Option<&Path>, a: &Allocation) -> Result<()> {
    // Unclaim before releasing: once released, the address may be handed
    // to another worker, who will claim it.
    if let Some(claims) = claims {
        for ip in &a.ips {
            let path = claims.join(ip.address.ip().to_string());
            std::fs::remove_file(&path)
                .with_context(|| format!("unclaiming {}", path.display()))?;
        }
    }
    let released = ipam.release(&a.key)?;
    if released.as_ref() != Some(a) {
        bail!("{}: held {a:?}, release gave {released:?}", a.key);
    }
    if ipam.release(&a.key)?.is_some() {
        bail!("{}: a second release freed something", a.key);
    }
    Ok(())
}
