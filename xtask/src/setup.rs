//! `cargo xtask setup`: what a fresh machine lacks, from the package
//! registries only (Debian's packages and crates.io).
//!
//! - Debian's `rustc-web`, `cargo-web` and `rust-web-src`: a Rust 1.96
//!   toolchain with the standard library's sources, which `-Z build-std=core`
//!   needs to build the eBPF crate for `bpfel-unknown-none` (rustup's nightly
//!   here has no `rust-src`, and components cannot be downloaded).
//! - Debian's `llvm-22-dev`, against which `bpf-linker` is built (the same
//!   LLVM major as that rustc).
//! - `bpf-linker` from crates.io, built with its `llvm-22` feature.
//! - The tools the tests and benchmarks drive: iproute2, the reference CNI
//!   plugins, iperf3, nftables/iptables.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run;

/// Debian packages the project needs, with a file each installs (checked
/// before asking apt, so a ready machine never touches the network).
const PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "/usr/bin/rustc"),
    ("cargo-web", "/usr/bin/cargo"),
    (
        "rust-web-src",
        "/usr/lib/rustlib/src/rust/library/core/Cargo.toml",
    ),
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("iproute2", "/usr/sbin/ip"),
    ("iputils-ping", "/usr/bin/ping"),
    ("socat", "/usr/bin/socat"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("iperf3", "/usr/bin/iperf3"),
    ("nftables", "/usr/sbin/nft"),
    ("iptables", "/usr/sbin/iptables-legacy"),
    ("busybox-static", "/bin/busybox"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn setup() -> Result<()> {
    install_packages()?;
    install_bpf_linker()?;
    check_bpffs()?;
    Ok(())
}

fn install_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("==> installing Debian packages: {}", missing.join(" "));
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    run(&mut apt(&["update", "-q"]))?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)
}

fn cargo_bin_dir() -> PathBuf {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return PathBuf::from(home).join("bin");
    }
    PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo/bin")
}

/// PATH with cargo's bin directory (where bpf-linker lives) in front.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths = vec![cargo_bin_dir()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    env::join_paths(paths).unwrap_or_default()
}

fn install_bpf_linker() -> Result<()> {
    let linker = cargo_bin_dir().join("bpf-linker");
    if let Ok(out) = Command::new(&linker).arg("--version").output()
        && out.status.success()
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    println!("==> building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22");
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("building bpf-linker")
}

fn check_bpffs() -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(root) {
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at /sys/fs/bpf and mounting it needs root");
    }
    println!("==> mounting bpffs at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    if !is_bpffs(root) {
        bail!("mounted bpffs at /sys/fs/bpf but it does not show as bpffs");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
