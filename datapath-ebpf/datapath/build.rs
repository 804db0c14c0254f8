//! Builds the eBPF crate for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR/weir-ebpf`, where `src/object.rs` embeds it.
//!
//! Why not aya-build: aya-build runs `rustup run <nightly>` with `-Z
//! build-std=core`, and a fresh machine's nightly has no `rust-src` (and no
//! way to download it). `cargo xtask setup` installs Debian's `rustc-web`,
//! `cargo-web` and `rust-web-src` instead; this script drives that toolchain
//! directly (`RUSTC_BOOTSTRAP=1` unlocks `-Z build-std` on it). Both
//! binaries can be overridden with `WEIR_BPF_CARGO` / `WEIR_BPF_RUSTC`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "weir-ebpf";

fn main() {
    if let Err(msg) = run() {
        // A build script reports failure by exiting non-zero; the message is
        // shown to the user as is.
        eprintln!("error: building the eBPF object failed: {msg}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or("weir-datapath has no parent directory")?
        .join("ebpf");
    let common_dir = manifest_dir.parent().ok_or("no parent")?.join("common");

    for var in ["WEIR_BPF_CARGO", "WEIR_BPF_RUSTC", "WEIR_BPF_LINKER_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }

    let cargo = env::var("WEIR_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("WEIR_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    for (what, path) in [("cargo", &cargo), ("rustc", &rustc)] {
        if !Path::new(path).exists() {
            return Err(format!(
                "the eBPF toolchain's {what} ({path}) is missing: run `cargo xtask setup`"
            ));
        }
    }

    // bpf-linker is installed by `cargo xtask setup` with `cargo install`.
    let mut path = env::var_os("PATH").unwrap_or_default();
    let linker_dir = env::var_os("WEIR_BPF_LINKER_DIR")
        .map(PathBuf::from)
        .or_else(|| env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin")))
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")));
    if let Some(dir) = linker_dir {
        if !dir.join("bpf-linker").exists() {
            return Err(format!(
                "bpf-linker is not in {}: run `cargo xtask setup`",
                dir.display()
            ));
        }
        let mut paths = vec![dir];
        paths.extend(env::split_paths(&path));
        path = env::join_paths(paths).map_err(|e| e.to_string())?;
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--package",
            PACKAGE,
            "--bins",
            "--release",
            "--target",
            TARGET,
        ])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!(
                    "--cfg=bpf_target_arch=\"{}\"",
                    env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?
                ),
                "-Cdebuginfo=2".into(),
                "-Clink-arg=--btf".into(),
            ]
            .join("\x1f"),
        );
    // The outer cargo's settings belong to the host build, not this one.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("{cargo} build of {PACKAGE} failed ({status})"));
    }
    let built = target_dir.join(TARGET).join("release").join(PACKAGE);
    let dst = out_dir.join(PACKAGE);
    std::fs::copy(&built, &dst)
        .map_err(|e| format!("copy {} to {}: {e}", built.display(), dst.display()))?;
    Ok(())
}
