//! Invoking CNI plugins the way a runtime does: environment variables,
//! the config on stdin, JSON on stdout; and running a conflist's chain
//! (ADD in order with each result passed on as `prevResult`, DEL in reverse).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::netns::NetNs;

/// Where Debian's containernetworking-plugins live.
pub const DEBIAN_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The `weir` binary under test: `$WEIR_BIN`, else the one cargo built next
/// to the running executable (`target/<profile>/weir`, whether that is a
/// test under `target/<profile>/deps` or a binary beside it).
pub fn weir_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_BIN") {
        return PathBuf::from(p);
    }
    match crate::cluster::sibling_bin("weir") {
        Ok(bin) => bin,
        Err(e) => panic!("{e}"),
    }
}

/// One plugin invocation.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
    pub config: Value,
    /// Extra environment (e.g. the test delay hook).
    pub env: Vec<(String, String)>,
}

impl Invocation {
    pub fn new(
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        config: Value,
    ) -> Self {
        Invocation {
            command: command.to_owned(),
            container_id: container_id.to_owned(),
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            args: String::new(),
            path: DEBIAN_PLUGIN_DIR.to_owned(),
            config,
            env: Vec::new(),
        }
    }
}

/// What a plugin answered.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed, when it is JSON.
    pub json: Option<Value>,
}

impl Outcome {
    /// The CNI error code, when the plugin failed with a protocol error.
    pub fn code(&self) -> Option<u64> {
        if self.success {
            return None;
        }
        self.json.as_ref()?.get("code")?.as_u64()
    }

    /// The result or an error describing the failure.
    pub fn ok(self) -> Result<Option<Value>> {
        if !self.success {
            bail!(
                "plugin failed: stdout {} stderr {}",
                self.stdout,
                self.stderr
            );
        }
        Ok(self.json)
    }
}

/// A command for `inv` against `plugin`, run inside `host` when given (the
/// node's namespace), with stdin/stdout piped.
pub fn command(plugin: &Path, inv: &Invocation, host: Option<&NetNs>) -> Result<Command> {
    let mut cmd = match host {
        Some(ns) => ns.command(plugin.to_str().context("plugin path")?)?,
        None => Command::new(plugin),
    };
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", &inv.command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", &inv.path)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// Starts `inv` and writes its stdin; the caller waits (or kills).
pub fn spawn(plugin: &Path, inv: &Invocation, host: Option<&NetNs>) -> Result<Child> {
    let mut child = command(plugin, inv, host)?
        .spawn()
        .context("spawn plugin")?;
    let body = serde_json::to_vec(&inv.config)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits early (or is killed) closes its end: ignore.
        let _ = stdin.write_all(&body);
    }
    Ok(child)
}

/// Runs `inv` to completion.
pub fn invoke(plugin: &Path, inv: &Invocation, host: Option<&NetNs>) -> Result<Outcome> {
    let child = spawn(plugin, inv, host)?;
    let out = child.wait_with_output().context("wait for plugin")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(Outcome {
        success: out.status.success(),
        json: serde_json::from_str(stdout.trim()).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs raw bytes as stdin (for undecodable configs).
pub fn invoke_raw(
    plugin: &Path,
    inv: &Invocation,
    stdin: &[u8],
    host: Option<&NetNs>,
) -> Result<Outcome> {
    let mut child = command(plugin, inv, host)?
        .spawn()
        .context("spawn plugin")?;
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(stdin);
    }
    let out = child.wait_with_output().context("wait for plugin")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(Outcome {
        success: out.status.success(),
        json: serde_json::from_str(stdout.trim()).ok(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A network configuration list, run as libcni runs it.
pub struct Chain {
    pub list: Value,
    /// `type` → executable.
    pub resolve: Box<dyn Fn(&str) -> PathBuf + Send + Sync>,
}

impl Chain {
    /// The config of plugin `i` of the list, as libcni hands it over: the
    /// list's name and cniVersion, the runtime config for the plugin's
    /// capabilities, and the previous result.
    fn plugin_config(&self, i: usize, prev: Option<&Value>, runtime: &Value) -> Value {
        let mut conf = self.list["plugins"][i].clone();
        conf["name"] = self.list["name"].clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(caps) = conf.get("capabilities").and_then(Value::as_object).cloned() {
            let mut rc = serde_json::Map::new();
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true)
                    && let Some(v) = runtime.get(&cap)
                {
                    rc.insert(cap, v.clone());
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    fn plugins(&self) -> usize {
        self.list["plugins"].as_array().map_or(0, Vec::len)
    }

    fn invocation(&self, command: &str, base: &Invocation, conf: Value) -> Invocation {
        let mut inv = base.clone();
        inv.command = command.to_owned();
        inv.config = conf;
        inv
    }

    /// ADD through the chain; returns the final result.
    pub fn add(&self, base: &Invocation, runtime: &Value, host: Option<&NetNs>) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for i in 0..self.plugins() {
            let conf = self.plugin_config(i, prev.as_ref(), runtime);
            let kind = conf["type"].as_str().context("plugin type")?.to_owned();
            let out = invoke(
                &(self.resolve)(&kind),
                &self.invocation("ADD", base, conf),
                host,
            )?;
            let result = out
                .ok()
                .with_context(|| format!("ADD of {kind}"))?
                .with_context(|| format!("{kind} printed no result"))?;
            prev = Some(result);
        }
        prev.context("empty chain")
    }

    /// CHECK through the chain with the cached result.
    pub fn check(
        &self,
        base: &Invocation,
        result: &Value,
        runtime: &Value,
        host: Option<&NetNs>,
    ) -> Result<()> {
        for i in 0..self.plugins() {
            let conf = self.plugin_config(i, Some(result), runtime);
            let kind = conf["type"].as_str().context("plugin type")?.to_owned();
            invoke(
                &(self.resolve)(&kind),
                &self.invocation("CHECK", base, conf),
                host,
            )?
            .ok()
            .with_context(|| format!("CHECK of {kind}"))?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse.
    pub fn del(
        &self,
        base: &Invocation,
        result: Option<&Value>,
        runtime: &Value,
        host: Option<&NetNs>,
    ) -> Result<()> {
        for i in (0..self.plugins()).rev() {
            let conf = self.plugin_config(i, result, runtime);
            let kind = conf["type"].as_str().context("plugin type")?.to_owned();
            invoke(
                &(self.resolve)(&kind),
                &self.invocation("DEL", base, conf),
                host,
            )?
            .ok()
            .with_context(|| format!("DEL of {kind}"))?;
        }
        Ok(())
    }
}

/// The usual CNI_ARGS of the CRI.
pub fn kubernetes_args(namespace: &str, pod: &str, container_id: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};\
         K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=00000000-0000-0000-0000-{}",
        &crate::random_hex(12)
    )
}

/// A GC config: `base` with the valid attachments.
pub fn gc_config(base: &Value, valid: &[(&str, &str)]) -> Value {
    let mut conf = base.clone();
    conf["cni.dev/valid-attachments"] = Value::Array(
        valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect(),
    );
    conf
}
