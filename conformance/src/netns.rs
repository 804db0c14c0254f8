//! Named network namespaces (`/run/netns/<name>`, as `ip netns` makes them),
//! deleted on drop, with helpers to run commands inside and to read their
//! interfaces, addresses, routes and neighbours as `ip -j` reports them.

use std::{
    fs::File,
    os::{fd::AsFd, unix::process::CommandExt},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `/run/netns/<name>` with its loopback up.
    pub fn new(name: &str) -> Result<NetNs> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace (it enters it between fork
    /// and exec).
    pub fn command(&self, program: &str) -> Result<Command> {
        let file = File::open(self.path()).with_context(|| format!("open {}", self.name))?;
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Runs `f` inside this namespace on a thread of its own (the calling
    /// thread's namespace never changes).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(self.path()).with_context(|| format!("open {}", self.name))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .context("setns")?;
                // The thread ends with f: its namespace dies with it.
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
        })
    }

    /// `ip -n <name> <args>`, failing on a non-zero exit; returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip -n <name> -j <args>`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Result<Value> {
        let out = run(Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .arg("-j")
            .args(args))?;
        if out.trim().is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_str(&out).with_context(|| format!("ip -j {args:?}: {out}"))
    }

    /// Names of the links in the namespace.
    pub fn link_names(&self) -> Result<Vec<String>> {
        Ok(self
            .ip_json(&["link", "show"])?
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect())
    }

    /// One link, as `ip -j link show dev` reports it.
    pub fn link(&self, name: &str) -> Result<Value> {
        let v = self.ip_json(&["link", "show", "dev", name])?;
        v.get(0).cloned().with_context(|| format!("no link {name}"))
    }

    /// `ip -j addr show dev <name>`: the addresses as `ip/prefix`.
    pub fn addresses(&self, name: &str) -> Result<Vec<String>> {
        let v = self.ip_json(&["addr", "show", "dev", name])?;
        Ok(v.get(0)
            .and_then(|l| l["addr_info"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect())
    }

    /// The routes of one family (`-4` or `-6`).
    pub fn routes(&self, family: &str) -> Result<Vec<Value>> {
        Ok(self
            .ip_json(&[family, "route", "show"])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// The neighbour entries of one device.
    pub fn neighbours(&self, dev: &str) -> Result<Vec<Value>> {
        Ok(self
            .ip_json(&["neigh", "show", "dev", dev])?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// A sysctl inside the namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let out = run(self.command("sysctl")?.args(["-n", key]))?;
        Ok(out.trim().to_owned())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `cmd`, failing with its stderr on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
