//! The suite's container runtime, with libcni's semantics: the plugin found
//! by `type` in the plugin directory, the `CNI_*` environment, the config on
//! stdin with the list's `name` and `cniVersion`, ADD through the chain in
//! order (each plugin gets the previous result), CHECK in order and DEL in
//! reverse with the cached result as `prevResult` (0.4.0 and later), STATUS
//! and GC sent to every plugin of the list.
//!
//! Unlike [`crate::cni`], every variable can be left out or set to garbage,
//! a plugin's failure keeps its error code, and a plugin that hangs is killed.

use std::{
    fmt,
    io::{Read, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::{Options, weir::WeirNode};
use crate::{netns::NetNs, random_hex};

/// How long one plugin invocation may take.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment of one invocation; `None` leaves a variable out.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
}

impl Call {
    /// A well-formed attachment call, with the CNI_ARGS the CRI sends.
    pub fn attachment(command: &str, container_id: &str, netns: &str, ifname: &str) -> Call {
        Call {
            command: Some(command.to_owned()),
            container_id: Some(container_id.to_owned()),
            netns: Some(netns.to_owned()),
            ifname: Some(ifname.to_owned()),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=cni-conformance;K8S_POD_NAME={container_id};\
                 K8S_POD_INFRA_CONTAINER_ID={container_id}"
            )),
        }
    }

    /// A call without an attachment (VERSION, STATUS, GC).
    pub fn bare(command: &str) -> Call {
        Call {
            command: Some(command.to_owned()),
            ..Call::default()
        }
    }
}

/// What a plugin answered.
#[derive(Clone, Debug)]
pub struct Reply {
    pub success: bool,
    pub exit: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
    pub timed_out: bool,
}

impl Reply {
    /// The error code, when the plugin failed with a CNI error on stdout.
    pub fn code(&self) -> Option<u64> {
        if self.success {
            return None;
        }
        self.json.as_ref()?.get("code")?.as_u64()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timed_out {
            return write!(f, "timed out after {PLUGIN_TIMEOUT:?}");
        }
        match self.exit {
            Some(c) => write!(f, "exit {c}")?,
            None => write!(f, "killed by a signal")?,
        }
        let out = self.stdout.trim();
        if !out.is_empty() {
            write!(f, ", stdout {}", clip(out, 300))?;
        }
        let err = self.stderr.trim();
        if !err.is_empty() {
            write!(f, ", stderr {}", clip(err, 300))?;
        }
        Ok(())
    }
}

/// A plugin of the chain failed; carried inside `anyhow::Error` so that
/// cases can read its code.
#[derive(Debug)]
pub struct PluginFailure {
    pub command: String,
    pub plugin: String,
    pub reply: Reply,
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} failed: {}",
            self.command, self.plugin, self.reply
        )
    }
}

impl std::error::Error for PluginFailure {}

/// The failure of a chain operation, if it was a plugin's.
pub fn plugin_failure(e: &anyhow::Error) -> Option<&PluginFailure> {
    e.downcast_ref::<PluginFailure>()
}

pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(n).collect();
    out.push('…');
    out
}

/// True when `a` is an older spec version than `b` (both `x.y.z`).
pub fn version_lt(a: &str, b: &str) -> bool {
    fn parts(v: &str) -> Vec<u64> {
        v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
    }
    parts(a) < parts(b)
}

/// One run's world: the host namespace the plugins run in, the state
/// directory, the weir node if any, and the network config as a list.
pub struct Runtime {
    /// The random prefix of every namespace and container id of the run.
    pub prefix: String,
    pub plugin_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The namespace standing for the host: plugins run inside it.
    pub host: NetNs,
    /// The config as a list (`name`, `cniVersion`, `plugins`), placeholders
    /// filled in.
    pub list: Value,
    // Declared after `host` so that the pins go after the links using them.
    _weir: Option<WeirNode>,
    _dir_guard: DirGuard,
}

struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Runtime {
    pub fn new(options: &Options) -> Result<Runtime> {
        let id = random_hex(6);
        let prefix = format!("cc-{id}-");
        let run_dir = std::env::temp_dir().join(format!("cc-{id}"));
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("create {}", run_dir.display()))?;
        let dir_guard = DirGuard(run_dir.clone());
        let host = NetNs::new(&format!("{prefix}host")).context("the host namespace")?;
        let weir = match &options.weir_node {
            Some(cidrs) => Some(WeirNode::new(&id, &run_dir, cidrs)?),
            None => None,
        };
        let mut vars = vec![("${RUN_DIR}", run_dir.display().to_string())];
        if let Some(w) = &weir {
            vars.push(("${PIN_ROOT}", w.pin_root().display().to_string()));
            vars.push(("${NODE_INFO}", w.node_info().display().to_string()));
        }
        let config = substitute(&options.config, &vars);
        let list = as_list(&config)?;
        Ok(Runtime {
            prefix,
            plugin_dir: options.plugin_dir.clone(),
            run_dir,
            host,
            list,
            _weir: weir,
            _dir_guard: dir_guard,
        })
    }

    pub fn network(&self) -> &str {
        self.list["name"].as_str().unwrap_or("")
    }

    /// The plugin types of the chain, in order.
    pub fn types(&self) -> Vec<String> {
        self.list["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["type"].as_str().map(str::to_owned))
            .collect()
    }

    /// A fresh namespace for a case.
    pub fn netns(&self, tag: &str) -> Result<NetNs> {
        NetNs::new(&format!("{}{tag}", self.prefix))
    }

    /// A container id unique to the run.
    pub fn container_id(&self, tag: &str) -> String {
        format!("{}{tag}-{}", self.prefix, random_hex(6))
    }

    /// Runs plugin `kind` once, inside the host namespace.
    pub fn exec(&self, kind: &str, call: &Call, stdin: &[u8]) -> Result<Reply> {
        let exe = self.plugin_dir.join(kind);
        if !exe.exists() {
            bail!("no plugin {kind} in {}", self.plugin_dir.display());
        }
        let mut cmd: Command = self
            .host
            .command(exe.to_str().context("plugin path is not UTF-8")?)?;
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", &self.plugin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("CNI_COMMAND", &call.command),
            ("CNI_CONTAINERID", &call.container_id),
            ("CNI_NETNS", &call.netns),
            ("CNI_IFNAME", &call.ifname),
            ("CNI_ARGS", &call.args),
        ] {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        run_with_timeout(cmd, stdin, PLUGIN_TIMEOUT)
            .with_context(|| format!("run {}", exe.display()))
    }

    /// The config of plugin `i` of the chain at `version`, as libcni builds
    /// it: the list's name and version, `prevResult` when given, and `extra`
    /// top-level keys (GC's valid attachments).
    pub fn plugin_config(
        &self,
        version: &str,
        i: usize,
        prev: Option<&Value>,
        extra: &Map<String, Value>,
    ) -> Value {
        let mut conf = self.list["plugins"][i].clone();
        conf["name"] = self.list["name"].clone();
        conf["cniVersion"] = json!(version);
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        for (k, v) in extra {
            conf[k] = v.clone();
        }
        conf
    }

    fn run_one(
        &self,
        version: &str,
        i: usize,
        call: &Call,
        prev: Option<&Value>,
        extra: &Map<String, Value>,
    ) -> Result<Reply> {
        let conf = self.plugin_config(version, i, prev, extra);
        let kind = conf["type"]
            .as_str()
            .context("plugin without a type")?
            .to_owned();
        let reply = self.exec(&kind, call, &serde_json::to_vec(&conf)?)?;
        if !reply.success {
            return Err(PluginFailure {
                command: call.command.clone().unwrap_or_default(),
                plugin: kind,
                reply,
            }
            .into());
        }
        Ok(reply)
    }

    /// ADD through the chain (with `call`'s CNI_COMMAND as it is, so that
    /// a bad one can be sent); the last plugin's result.
    pub fn add(&self, version: &str, call: &Call) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for i in 0..self.types().len() {
            let reply = self.run_one(version, i, call, prev.as_ref(), &Map::new())?;
            let result = reply.json.with_context(|| {
                format!(
                    "ADD of plugin {i} printed no JSON result: {}",
                    clip(reply.stdout.trim(), 300)
                )
            })?;
            prev = Some(result);
        }
        prev.context("the chain has no plugins")
    }

    /// CHECK through the chain with the cached result.
    pub fn check(&self, version: &str, call: &Call, result: &Value) -> Result<()> {
        for i in 0..self.types().len() {
            self.run_one(version, i, call, Some(result), &Map::new())?;
        }
        Ok(())
    }

    /// DEL through the chain in reverse; `prevResult` only from 0.4.0 on,
    /// as libcni does.
    pub fn del(&self, version: &str, call: &Call, result: Option<&Value>) -> Result<()> {
        let prev = result.filter(|_| !version_lt(version, "0.4.0"));
        for i in (0..self.types().len()).rev() {
            self.run_one(version, i, call, prev, &Map::new())?;
        }
        Ok(())
    }

    /// STATUS to every plugin of the list.
    pub fn status(&self, version: &str) -> Result<()> {
        for i in 0..self.types().len() {
            self.run_one(version, i, &Call::bare("STATUS"), None, &Map::new())?;
        }
        Ok(())
    }

    /// GC to every plugin of the list with the valid attachments.
    pub fn gc(&self, version: &str, valid: &[(&str, &str)]) -> Result<()> {
        let list: Vec<Value> = valid
            .iter()
            .map(|(c, i)| json!({"containerID": c, "ifname": i}))
            .collect();
        // libcni sends the list under both names: the spec's, and the one an
        // earlier draft used.
        let mut extra = Map::new();
        extra.insert(
            "cni.dev/valid-attachments".into(),
            Value::Array(list.clone()),
        );
        extra.insert("cni.dev/attachments".into(), Value::Array(list));
        for i in 0..self.types().len() {
            self.run_one(version, i, &Call::bare("GC"), None, &extra)?;
        }
        Ok(())
    }

    /// Plugin `kind`'s VERSION answer; stdin carries only a `cniVersion`, as
    /// libcni sends it.
    pub fn version_of(&self, kind: &str, newest: &str) -> Result<Reply> {
        let stdin = serde_json::to_vec(&json!({ "cniVersion": newest }))?;
        self.exec(kind, &Call::bare("VERSION"), &stdin)
    }
}

/// A container attached to the network; DELs itself (best effort) and
/// removes its namespace when dropped unless [`Attachment::deleted`] says
/// it is already gone.
pub struct Attachment<'a> {
    pub rt: &'a Runtime,
    pub version: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: Option<NetNs>,
    pub result: Option<Value>,
    pub deleted: bool,
    /// ADD was sent (whether or not it succeeded): the guard DELs, as a
    /// runtime does after a failed ADD.
    pub attempted: bool,
}

impl<'a> Attachment<'a> {
    /// A container with its own namespace, not yet added.
    pub fn new(rt: &'a Runtime, version: &str, tag: &str) -> Result<Attachment<'a>> {
        Ok(Attachment {
            rt,
            version: version.to_owned(),
            container_id: rt.container_id(tag),
            ifname: "eth0".to_owned(),
            netns: Some(rt.netns(tag)?),
            result: None,
            deleted: false,
            attempted: false,
        })
    }

    pub fn netns_path(&self) -> String {
        self.netns
            .as_ref()
            .map(|n| n.path().display().to_string())
            .unwrap_or_default()
    }

    pub fn ns(&self) -> &NetNs {
        self.netns.as_ref().expect("attachment without a namespace")
    }

    pub fn call(&self, command: &str) -> Call {
        Call::attachment(
            command,
            &self.container_id,
            &self.netns_path(),
            &self.ifname,
        )
    }

    /// ADD; caches the result.
    pub fn add(&mut self) -> Result<&Value> {
        self.attempted = true;
        let r = self.rt.add(&self.version, &self.call("ADD"))?;
        self.result = Some(r);
        Ok(self.result.as_ref().expect("just set"))
    }

    pub fn check(&self) -> Result<()> {
        let result = self.result.as_ref().context("CHECK before ADD")?;
        self.rt.check(&self.version, &self.call("CHECK"), result)
    }

    /// DEL with the cached result; marks the attachment deleted on success.
    pub fn del(&mut self) -> Result<()> {
        self.rt
            .del(&self.version, &self.call("DEL"), self.result.as_ref())?;
        self.deleted = true;
        Ok(())
    }
}

impl Drop for Attachment<'_> {
    fn drop(&mut self) {
        if !self.deleted && (self.attempted || self.result.is_some()) {
            let _ = self
                .rt
                .del(&self.version, &self.call("DEL"), self.result.as_ref());
        }
        // The namespace goes after the DEL (NetNs's own Drop).
        self.netns.take();
    }
}

/// Replaces each placeholder in every string of `v`.
pub fn substitute(v: &Value, vars: &[(&str, String)]) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for (k, val) in vars {
                s = s.replace(k, val);
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, vars)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A single plugin config becomes a list of one; a list stays as it is.
pub fn as_list(conf: &Value) -> Result<Value> {
    let obj = conf
        .as_object()
        .context("the config is not a JSON object")?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .context("the config has no name")?;
    if let Some(plugins) = obj.get("plugins") {
        let plugins = plugins.as_array().context("plugins is not a list")?;
        if plugins.is_empty() {
            bail!("the conflist has no plugins");
        }
        for p in plugins {
            p.get("type")
                .and_then(Value::as_str)
                .context("a plugin of the list has no type")?;
        }
        return Ok(conf.clone());
    }
    obj.get("type")
        .and_then(Value::as_str)
        .context("the config has neither type nor plugins")?;
    let mut plugin = conf.clone();
    if let Some(p) = plugin.as_object_mut() {
        p.remove("name");
        p.remove("cniVersion");
    }
    Ok(json!({
        "name": name,
        "cniVersion": obj.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
        "plugins": [plugin],
    }))
}

/// Runs `cmd` with `stdin`, killing it after `timeout`.
fn run_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Result<Reply> {
    let mut child = cmd.spawn().context("spawn")?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    if let Some(mut s) = child.stdin.take() {
        // A plugin that exits without reading closes its end: ignore.
        let _ = s.write_all(stdin);
    }
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().context("wait")? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            timed_out = true;
            break child.wait().context("wait after kill")?;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(Reply {
        success: status.success() && !timed_out,
        exit: status.code(),
        json: serde_json::from_str(stdout.trim()).ok(),
        stdout,
        stderr,
        timed_out,
    })
}
