//! `cargo xtask <command>`: everything weir needs beyond plain cargo.
//!
//! - `setup`: install what a fresh machine lacks (Debian packages, bpf-linker),
//!   check bpffs. Idempotent and quick when nothing is missing.
//! - `build`: build every binary, the eBPF object included.
//! - `test`: setup, then the whole test suite.
//! - `lab`, `bench`: the lab cluster and the benchmarks.

mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "weir's build, test, lab and bench tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Remove everything the lab made.
    Down,
    /// Say whether a lab is up.
    Status,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing Debian packages and bpf-linker; check bpffs.
    Setup,
    /// Build every binary (release), the eBPF object included.
    Build,
    /// Setup, build, and run the whole test suite (needs root).
    Test {
        /// Extra arguments passed to the test runner (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Start the lab: a weir cluster in network namespaces (needs root).
    Lab {
        #[command(subcommand)]
        action: Option<LabCmd>,
    },
    /// Run the benchmarks (as root); the report goes to results/.
    Bench {
        /// A short run (under five minutes).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => {
            setup::setup()?;
            build()
        }
        Cmd::Test { args } => {
            setup::setup()?;
            build()?;
            test(&args)
        }
        Cmd::Lab { action } => match action {
            None => {
                setup::setup()?;
                build()?;
                lab(&["up"])
            }
            Some(LabCmd::Down) => lab(&["down"]),
            Some(LabCmd::Status) => lab(&["status"]),
        },
        Cmd::Bench { quick } => {
            setup::setup()?;
            bench(quick)
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Cargo's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo` as the user invoked it (the rustup proxy), with bpf-linker on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd.env("PATH", setup::path_with_cargo_bin());
    cmd
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build() -> Result<()> {
    println!("==> building weir (release, eBPF object included)");
    run(cargo().args(["build", "--release", "--workspace", "--bins"]))
}

fn lab(args: &[&str]) -> Result<()> {
    if !setup::is_root() {
        bail!("the lab needs root (network namespaces, bpffs, veths): run it as root");
    }
    let bin = target_dir().join("release/weir-lab");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo xtask lab` (it builds first)",
            bin.display()
        );
    }
    run(Command::new(bin).args(args))
}

fn bench(quick: bool) -> Result<()> {
    if !setup::is_root() {
        bail!("the benchmarks need root (network namespaces, bpffs): run them as root");
    }
    println!("==> building the benchmarks");
    run(cargo().args(["build", "--release", "-p", "weir-bench"]))?;
    let out = workspace_root().join("results");
    let mut cmd = Command::new(target_dir().join("release/weir-bench"));
    cmd.arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    run(&mut cmd)
}

fn test(args: &[String]) -> Result<()> {
    if !setup::is_root() {
        bail!("the test suite needs root (network namespaces, bpffs, veths): run it as root");
    }
    println!("==> running the test suite");
    run(cargo()
        .args(["test", "--release", "--workspace", "--no-fail-fast", "--"])
        .args(args))?;
    if args.is_empty() {
        println!("==> the benchmarks, quick, to show they work end to end");
        bench(true)?;
    }
    Ok(())
}
