//! deploy/: the manifests read as the API server reads them, their
//! cross-references, the conflist run through the real `weir`, the install
//! and uninstall scripts against a temporary tree standing in for a node's
//! root, and the daemon container's command, environment and capabilities
//! run through the real `weir-node`.
//!
//! Needs root (namespaces, bpffs, capabilities) and the binaries built with
//! the same profile: `cargo build -p weir-cni -p weir-node`.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{CommandFactory, Parser};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, Namespace, PodSpec, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use weir_conformance::{
    cni::{self, Chain, Invocation},
    netns::NetNs,
    node::{NodeOptions, TestNode},
    random_hex,
};
use weir_node::cli::{Cli, Cmd};

// ---------------------------------------------------------------------------
// Reading the manifests

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_owned()
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

/// Every document of a YAML stream, as JSON values (empty documents
/// skipped).
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Where `back` (the typed object written out again) differs from `orig`
/// (what the file says): a field the type does not know is missing from
/// `back`.
fn differences(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, ov) in o {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => differences(ov, bv, &p, out),
                    None => out.push(format!("{p}: not a field of this type")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                differences(ov, bv, &format!("{path}[{i}]"), out);
            }
        }
        _ if orig == back => {}
        _ => out.push(format!("{path}: {orig} read back as {back}")),
    }
}

/// `v` as a `T`, failing on any field `T` does not have (the typed reading
/// drops it, so writing the object out again loses it).
fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    differences(v, &back, "", &mut diffs);
    if diffs.is_empty() {
        Ok(typed)
    } else {
        Err(diffs.join("; "))
    }
}

/// deploy/weir.yaml, each object read strictly into its type.
struct Deploy {
    namespace: Namespace,
    service_account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    config: ConfigMap,
    daemonset: DaemonSet,
}

fn manifest_documents() -> Vec<Value> {
    let path = deploy_dir().join("weir.yaml");
    yaml_documents(&fs::read_to_string(&path).expect("deploy/weir.yaml"))
}

fn one<T>(found: &mut Vec<T>, kind: &str) -> T {
    assert_eq!(found.len(), 1, "deploy/weir.yaml has one {kind}");
    found.pop().expect("one")
}

fn deploy() -> Deploy {
    let (mut ns, mut sa, mut role, mut binding, mut cm, mut ds) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for doc in manifest_documents() {
        let kind = doc["kind"].as_str().unwrap_or("").to_owned();
        let api = doc["apiVersion"].as_str().unwrap_or("").to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let fail = |e: String| -> ! { panic!("{api} {kind} {name}: {e}") };
        match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => ns.push(strict::<Namespace>(&doc).unwrap_or_else(|e| fail(e))),
            ("v1", "ServiceAccount") => {
                sa.push(strict::<ServiceAccount>(&doc).unwrap_or_else(|e| fail(e)))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                role.push(strict::<ClusterRole>(&doc).unwrap_or_else(|e| fail(e)))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                binding.push(strict::<ClusterRoleBinding>(&doc).unwrap_or_else(|e| fail(e)))
            }
            ("v1", "ConfigMap") => cm.push(strict::<ConfigMap>(&doc).unwrap_or_else(|e| fail(e))),
            ("apps/v1", "DaemonSet") => {
                ds.push(strict::<DaemonSet>(&doc).unwrap_or_else(|e| fail(e)))
            }
            _ => panic!("deploy/weir.yaml: unexpected object {api} {kind} {name}"),
        }
    }
    Deploy {
        namespace: one(&mut ns, "Namespace"),
        service_account: one(&mut sa, "ServiceAccount"),
        role: one(&mut role, "ClusterRole"),
        binding: one(&mut binding, "ClusterRoleBinding"),
        config: one(&mut cm, "ConfigMap"),
        daemonset: one(&mut ds, "DaemonSet"),
    }
}

impl Deploy {
    fn pod(&self) -> &PodSpec {
        self.daemonset
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("the DaemonSet's pod spec")
    }

    fn container(&self, name: &str) -> &Container {
        let pod = self.pod();
        pod.containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    /// The daemon: the one regular container.
    fn daemon(&self) -> &Container {
        let pod = self.pod();
        assert_eq!(pod.containers.len(), 1, "one container: weir-node");
        &pod.containers[0]
    }

    fn config_data(&self) -> &BTreeMap<String, String> {
        self.config.data.as_ref().expect("the ConfigMap's data")
    }

    /// The conflist the install init container writes: the ConfigMap key
    /// whose name ends in `.conflist`.
    fn conflist(&self) -> (String, Value) {
        let mut lists: Vec<_> = self
            .config_data()
            .iter()
            .filter(|(k, _)| k.ends_with(".conflist"))
            .collect();
        assert_eq!(lists.len(), 1, "one conflist in the ConfigMap");
        let (name, text) = lists.pop().expect("one");
        let list = serde_json::from_str(text).expect("the conflist is JSON");
        (name.clone(), list)
    }
}

/// The value of each environment variable `c` sets, as the kubelet
/// resolves it (`None`: an optional reference to a missing key, which the
/// kubelet leaves unset).
fn resolve_env(d: &Deploy, c: &Container, node_name: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            assert!(e.value_from.is_none(), "{}: value and valueFrom", e.name);
            Some(v.clone())
        } else {
            let from = e.value_from.as_ref().expect("value or valueFrom");
            if let Some(f) = &from.field_ref {
                assert_eq!(f.field_path, "spec.nodeName", "{}", e.name);
                Some(node_name.to_owned())
            } else if let Some(r) = &from.config_map_key_ref {
                assert_eq!(
                    r.name,
                    d.config.metadata.name.clone().unwrap_or_default(),
                    "{}: the ConfigMap",
                    e.name
                );
                match d.config_data().get(&r.key) {
                    Some(v) => Some(v.clone()),
                    None if r.optional == Some(true) => None,
                    None => panic!("{}: the ConfigMap has no key {}", e.name, r.key),
                }
            } else {
                panic!("{}: unsupported valueFrom", e.name)
            }
        };
        out.push((e.name.clone(), value));
    }
    out
}

/// The port a probe's `httpGet` connects to.
fn probe_port(c: &Container, probe: &Probe) -> u16 {
    let get = probe.http_get.as_ref().expect("an httpGet probe");
    match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).expect("a port"),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| u16::try_from(p.container_port).expect("a port"))
            .unwrap_or_else(|| panic!("no port named {name}")),
    }
}

fn probe_path(probe: &Probe) -> String {
    probe
        .http_get
        .as_ref()
        .and_then(|g| g.path.clone())
        .expect("a probe path")
}

/// weir-node's listen address as the daemon container configures it.
fn listen_addr(d: &Deploy) -> SocketAddr {
    let env = resolve_env(d, d.daemon(), "n");
    let listen = env
        .iter()
        .find(|(k, _)| k == "WEIR_LISTEN")
        .and_then(|(_, v)| v.clone());
    let listen = match listen {
        Some(l) => l,
        None => {
            // weir-node's own default.
            let args = weir_node_run_args();
            let arg = args
                .iter()
                .find(|a| a.get_long() == Some("listen"))
                .expect("--listen");
            arg.get_default_values()
                .first()
                .and_then(|v| v.to_str())
                .expect("a default")
                .to_owned()
        }
    };
    listen.parse().expect("WEIR_LISTEN is an address")
}

// ---------------------------------------------------------------------------
// Binaries, temporary trees, commands

fn weir_node_bin() -> PathBuf {
    let weir = cni::weir_bin();
    let bin = weir.with_file_name("weir-node");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p weir-node, with the same profile)",
        bin.display()
    );
    bin
}

/// A directory of this test's own, removed on drop.
struct TempTree(PathBuf);

impl TempTree {
    fn new(tag: &str) -> TempTree {
        let p = std::env::temp_dir().join(format!("weir-deploy-{tag}-{}", random_hex(10)));
        fs::create_dir_all(&p).expect("temp dir");
        TempTree(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A directory on the real bpffs, removed (with its pins) on drop.
struct BpfDir(PathBuf);

impl BpfDir {
    fn new(tag: &str) -> BpfDir {
        weir_datapath::bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).expect("bpffs");
        let p = PathBuf::from(format!("/sys/fs/bpf/weir-deploy-{tag}-{}", random_hex(8)));
        fs::create_dir_all(&p).expect("bpffs dir");
        BpfDir(p)
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn script(name: &str) -> PathBuf {
    deploy_dir().join(name)
}

/// Runs a deploy/ script with exactly `env` (and PATH).
fn run_script(cmd: Command, name: &str, env: &[(&str, &Path)]) -> Output {
    let mut cmd = cmd;
    cmd.arg(script(name)).env_clear().env("PATH", PATH);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the script")
}

fn must(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {} stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// (content, mode, inode, mtime) of every file under `dir`, by relative
/// path; symlinks by their target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32, u64, i64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32, u64, i64)>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(root).expect("under root").to_owned();
            let m = fs::symlink_metadata(&p).expect("metadata");
            if m.is_dir() {
                walk(root, &p, out);
            } else if m.file_type().is_symlink() {
                let t = fs::read_link(&p).expect("link");
                out.insert(
                    rel,
                    (
                        t.into_os_string().into_encoded_bytes(),
                        0,
                        m.ino(),
                        m.mtime(),
                    ),
                );
            } else {
                out.insert(
                    rel,
                    (
                        fs::read(&p).expect("read"),
                        m.permissions().mode() & 0o7777,
                        m.ino(),
                        m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// A stand-in node root with other plugins' files already in the CNI
/// directories, and the sources the install script copies.
struct FakeNode {
    tree: TempTree,
}

impl FakeNode {
    fn new(tag: &str) -> FakeNode {
        let tree = TempTree::new(tag);
        let node = FakeNode { tree };
        let (bin, conf) = (node.bin_dir(), node.conf_dir());
        fs::create_dir_all(&bin).expect("bin dir");
        fs::create_dir_all(conf.join("multus.d")).expect("conf dir");
        fs::create_dir_all(node.src()).expect("src dir");
        for (dir, name, body) in [
            (&bin, "portmap", &b"#!/bin/sh\necho portmap\n"[..]),
            (&bin, "loopback", b"\x7fELF not really"),
            (
                &conf,
                "10-flannel.conflist",
                br#"{"name":"cbr0","plugins":[]}"#,
            ),
            (&conf, "99-loopback.conf", br#"{"type":"loopback"}"#),
            (&conf, "README", b"not a config\n"),
            (&conf, ".hidden.conflist", b"{}"),
            (
                &conf.join("multus.d"),
                "multus.kubeconfig",
                b"apiVersion: v1\n",
            ),
        ] {
            fs::write(dir.join(name), body).expect("write other plugin file");
        }
        std::os::unix::fs::symlink("10-flannel.conflist", conf.join("11-alias.conflist"))
            .expect("symlink");
        node
    }

    fn root(&self) -> &Path {
        self.tree.path()
    }
    fn bin_dir(&self) -> PathBuf {
        self.root().join("host/opt/cni/bin")
    }
    fn conf_dir(&self) -> PathBuf {
        self.root().join("host/etc/cni/net.d")
    }
    fn host_root(&self) -> PathBuf {
        self.root().join("host")
    }
    fn src(&self) -> PathBuf {
        self.root().join("src")
    }

    /// Other plugins' files in the CNI directories, as they are now.
    fn others(&self) -> BTreeMap<PathBuf, (Vec<u8>, u32, u64, i64)> {
        let mut s = snapshot(&self.host_root());
        s.retain(|p, _| {
            (p.starts_with("opt/cni/bin") || p.starts_with("etc/cni/net.d"))
                && !(p.ends_with("opt/cni/bin/weir")
                    || p.file_name() == Some(std::ffi::OsStr::new("05-weir.conflist")))
        });
        s
    }

    /// Runs deploy/install.sh with `binary` and `conflist` as sources, as
    /// the install init container does: as root with no capability at all.
    fn install(&self, binary: &Path, conflist: &Path) -> Output {
        let mut sh = Command::new("setpriv");
        sh.args([
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            "sh",
        ]);
        run_script(
            sh,
            "install.sh",
            &[
                ("WEIR_HOST_ROOT", &self.host_root()),
                ("WEIR_CNI_BIN", binary),
                ("WEIR_CONFLIST", conflist),
            ],
        )
    }
}

/// The manifest's conflist written to `dir` under its ConfigMap key.
fn write_manifest_conflist(d: &Deploy, dir: &Path) -> PathBuf {
    let (name, _) = d.conflist();
    let path = dir.join(&name);
    fs::write(&path, &d.config_data()[&name]).expect("write conflist");
    path
}

fn http_get(ns: &NetNs, port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    ns.run_in(move || -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: weir\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    })
    .ok()
    .flatten()
}

fn wait_for<T>(
    secs: u64,
    what: &str,
    log: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Linux capability numbers, by the names Kubernetes uses.
fn capability_number(name: &str) -> u32 {
    match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "FOWNER" => 3,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        "NET_RAW" => 13,
        "NET_ADMIN" => 12,
        "IPC_LOCK" => 14,
        "SYS_MODULE" => 16,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "SYS_RESOURCE" => 24,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} is not one this test knows"),
    }
}

// ---------------------------------------------------------------------------
// The manifests

#[test]
fn every_manifest_reads_into_its_kubernetes_type_with_no_unknown_field() {
    let d = deploy();
    assert_eq!(d.namespace.metadata.name.as_deref(), Some("weir-system"));

    // The check itself catches a misspelled field, deep or shallow.
    let docs = manifest_documents();
    let mut ds = docs
        .iter()
        .find(|v| v["kind"] == "DaemonSet")
        .expect("the DaemonSet")
        .clone();
    ds["spec"]["template"]["spec"]["hostNetwrok"] = json!(true);
    let err = strict::<DaemonSet>(&ds).expect_err("a misspelled field is refused");
    assert!(err.contains(".spec.template.spec.hostNetwrok"), "{err}");
    let mut ds = docs
        .iter()
        .find(|v| v["kind"] == "DaemonSet")
        .expect("the DaemonSet")
        .clone();
    ds["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] =
        json!("/x");
    assert!(strict::<DaemonSet>(&ds).is_err());
    let mut cm = docs
        .iter()
        .find(|v| v["kind"] == "ConfigMap")
        .expect("the ConfigMap")
        .clone();
    cm["datta"] = json!({});
    assert!(strict::<ConfigMap>(&cm).is_err());

    // The kustomization applies exactly weir.yaml, and it exists.
    let kust = yaml_documents(
        &fs::read_to_string(deploy_dir().join("kustomization.yaml")).expect("kustomization"),
    );
    assert_eq!(kust.len(), 1);
    let k = &kust[0];
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a path"))
        .collect();
    assert_eq!(resources, ["weir.yaml"]);
    for r in resources {
        assert!(deploy_dir().join(r).is_file(), "{r}");
    }
    // Its image override names the image the manifest uses.
    let images: BTreeSet<String> = d
        .pod()
        .containers
        .iter()
        .chain(d.pod().init_containers.iter().flatten())
        .map(|c| c.image.clone().expect("an image"))
        .map(|i| i.split(':').next().expect("name").to_owned())
        .collect();
    for i in k["images"].as_array().expect("images") {
        assert!(images.contains(i["name"].as_str().expect("name")), "{i}");
    }
}

#[test]
fn the_daemonset_runs_one_daemon_on_every_node_with_its_host_state() {
    let d = deploy();
    let spec = d.daemonset.spec.as_ref().expect("spec");
    let pod = d.pod();

    // The selector selects the pods it makes.
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        assert_eq!(labels.as_ref().and_then(|l| l.get(k)), Some(v), "{k}");
    }

    // Never two daemons on a node: the old pod goes before the new comes.
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));

    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let grace = pod
        .termination_grace_period_seconds
        .expect("a grace period");
    assert!((5..=60).contains(&grace), "{grace}");
    // Every taint, any key, any effect.
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration for every taint"
    );

    // The init containers: bpffs first, then the install script.
    let inits: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["mount-bpffs", "install-cni"]);
    let install = d.container("install-cni");
    assert_eq!(
        install.command.as_deref(),
        Some(&["/usr/local/bin/install.sh".to_owned()][..])
    );

    // The daemon: `weir-node run`, this node's name, both probes.
    let daemon = d.daemon();
    let cmd: Vec<String> = daemon
        .command
        .iter()
        .flatten()
        .chain(daemon.args.iter().flatten())
        .cloned()
        .collect();
    assert!(cmd[0].ends_with("/weir-node"), "{cmd:?}");
    assert_eq!(cmd[1], "run", "{cmd:?}");
    let env = resolve_env(&d, daemon, "the-node");
    assert!(
        env.contains(&("NODE_NAME".into(), Some("the-node".into()))),
        "{env:?}"
    );
    assert_eq!(
        probe_path(daemon.liveness_probe.as_ref().expect("liveness")),
        "/healthz"
    );
    assert_eq!(
        probe_path(daemon.readiness_probe.as_ref().expect("readiness")),
        "/readyz"
    );

    // Kubernetes admits Bidirectional propagation only in privileged
    // containers; and only the bpffs init container is privileged.
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        for m in c.volume_mounts.iter().flatten() {
            if m.mount_propagation.as_deref() == Some("Bidirectional") {
                assert!(
                    privileged,
                    "{}: Bidirectional {} needs privileged",
                    c.name, m.mount_path
                );
            }
        }
        assert_eq!(privileged, c.name == "mount-bpffs", "{} privileged", c.name);
    }
    let bpf_mount = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/sys/fs/bpf")
            .and_then(|m| m.mount_propagation.clone())
    };
    assert_eq!(
        bpf_mount(d.container("mount-bpffs")).as_deref(),
        Some("Bidirectional")
    );
    assert_eq!(bpf_mount(daemon).as_deref(), Some("HostToContainer"));

    // The host paths of DESIGN.md, mounted at the same place inside, so that
    // the paths weir-node writes into node.json (the pin root) hold on the
    // host, where the CNI binary reads them.
    let volumes: BTreeMap<&str, &str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let host_paths: BTreeSet<&str> = volumes.values().copied().collect();
    for p in [
        "/sys/fs/bpf",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/lib/weir",
        "/run/weir",
        "/var/log/weir",
    ] {
        assert!(host_paths.contains(p), "no hostPath volume for {p}");
    }
    for m in daemon.volume_mounts.iter().flatten() {
        if let Some(host) = volumes.get(m.name.as_str()) {
            assert_eq!(
                m.mount_path.as_str(),
                *host,
                "{} is mounted where the host has it",
                m.name
            );
        }
    }
    for p in ["/sys/fs/bpf", "/run/weir"] {
        let m = daemon
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == p)
            .unwrap_or_else(|| panic!("weir-node mounts {p}"));
        assert_ne!(m.read_only, Some(true), "{p} is writable");
    }

    // Read-only access to the cluster, nothing else.
    let rules = d.role.rules.as_ref().expect("rules");
    let mut granted = BTreeSet::new();
    for r in rules {
        assert_eq!(r.verbs, ["get", "list", "watch"], "{r:?}");
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                granted.insert(format!("{g}/{res}"));
            }
        }
    }
    let want: BTreeSet<String> = ["/nodes", "/services", "discovery.k8s.io/endpointslices"]
        .map(String::from)
        .into();
    assert_eq!(granted, want);
}

#[test]
fn cross_references_hold() {
    let d = deploy();
    let pod = d.pod();
    let ns = d.namespace.metadata.name.clone().expect("namespace name");
    let cm_name = d.config.metadata.name.clone().expect("ConfigMap name");

    // Namespaced objects live in the Namespace.
    assert_eq!(
        d.service_account.metadata.namespace.as_deref(),
        Some(ns.as_str())
    );
    assert_eq!(d.config.metadata.namespace.as_deref(), Some(ns.as_str()));
    assert_eq!(d.daemonset.metadata.namespace.as_deref(), Some(ns.as_str()));

    // The ServiceAccount exists and the binding grants it the role.
    let sa = d.service_account.metadata.name.clone().expect("SA name");
    assert_eq!(pod.service_account_name.as_deref(), Some(sa.as_str()));
    assert_eq!(d.binding.role_ref.kind, "ClusterRole");
    assert_eq!(d.binding.role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(
        Some(&d.binding.role_ref.name),
        d.role.metadata.name.as_ref()
    );
    let subjects = d.binding.subjects.as_ref().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa);
    assert_eq!(subjects[0].namespace.as_deref(), Some(ns.as_str()));

    // Every mount has its volume, every volume is used, names are unique.
    let volumes: BTreeMap<&str, _> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    assert_eq!(
        volumes.len(),
        pod.volumes.as_ref().map_or(0, Vec::len),
        "unique volume names"
    );
    let mut used = BTreeSet::new();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let mut paths = BTreeSet::new();
        for m in c.volume_mounts.iter().flatten() {
            assert!(
                volumes.contains_key(m.name.as_str()),
                "{}: no volume {}",
                c.name,
                m.name
            );
            assert!(
                paths.insert(&m.mount_path),
                "{}: {} mounted twice",
                c.name,
                m.mount_path
            );
            used.insert(m.name.as_str());
        }
    }
    assert_eq!(
        used,
        volumes.keys().copied().collect::<BTreeSet<_>>(),
        "every volume is mounted"
    );

    // ConfigMap volumes name this ConfigMap and keys it has.
    for v in volumes.values() {
        if let Some(cmv) = &v.config_map {
            assert_eq!(cmv.name, cm_name, "volume {}", v.name);
            for item in cmv.items.iter().flatten() {
                assert!(
                    d.config_data().contains_key(&item.key),
                    "no key {}",
                    item.key
                );
            }
        }
    }
    // Environment references resolve (resolve_env panics otherwise).
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        resolve_env(&d, c, "n");
        assert!(c.env_from.is_none(), "{}: explicit variables only", c.name);
    }

    // The install container reads the conflist where the ConfigMap volume
    // puts it, and writes where the host's CNI directories are mounted.
    let install = d.container("install-cni");
    let env: BTreeMap<String, String> = resolve_env(&d, install, "n")
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let conflist_path = PathBuf::from(&env["WEIR_CONFLIST"]);
    let (conflist_key, _) = d.conflist();
    let mount = install
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| conflist_path.starts_with(&m.mount_path))
        .expect("the conflist's mount");
    let cmv = volumes[mount.name.as_str()]
        .config_map
        .as_ref()
        .expect("a ConfigMap volume");
    let rel = conflist_path
        .strip_prefix(&mount.mount_path)
        .expect("under the mount");
    let item = cmv
        .items
        .iter()
        .flatten()
        .find(|i| Path::new(&i.path) == rel)
        .expect("an item for the conflist");
    assert_eq!(item.key, conflist_key);
    let root = PathBuf::from(&env["WEIR_HOST_ROOT"]);
    for host in ["/opt/cni/bin", "/etc/cni/net.d"] {
        let inside = root.join(host.trim_start_matches('/'));
        let m = install
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&m.mount_path) == inside)
            .unwrap_or_else(|| panic!("install-cni mounts {}", inside.display()));
        let v = volumes[m.name.as_str()];
        assert_eq!(v.host_path.as_ref().map(|h| h.path.as_str()), Some(host));
        assert_ne!(m.read_only, Some(true));
    }
    // ...and every variable it is given is one install.sh reads.
    let install_sh = fs::read_to_string(script("install.sh")).expect("install.sh");
    for k in env.keys() {
        assert!(
            install_sh.contains(&format!("${{{k}")),
            "install.sh does not read {k}"
        );
    }

    // The probes and the port reach weir-node's listener: the kubelet probes
    // the pod's IP, the node's own with hostNetwork.
    let listen = listen_addr(&d);
    assert!(
        listen.ip().is_unspecified(),
        "{listen}: probes come to the node's IP"
    );
    let daemon = d.daemon();
    for (what, p) in [
        ("liveness", &daemon.liveness_probe),
        ("readiness", &daemon.readiness_probe),
        ("startup", &daemon.startup_probe),
    ] {
        if let Some(p) = p {
            assert_eq!(probe_port(daemon, p), listen.port(), "{what} probe port");
        }
    }
    let ports: Vec<i32> = daemon
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [i32::from(listen.port())]);

    // Every program a container starts is in the image: the Containerfile
    // installs it, or the base image has it.
    let containerfile =
        fs::read_to_string(deploy_dir().join("Containerfile")).expect("Containerfile");
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        let program = c
            .command
            .as_ref()
            .and_then(|c| c.first())
            .expect("a command");
        if program == "/bin/sh" {
            continue;
        }
        assert!(
            containerfile.contains(&format!("/out{program}")),
            "{}: the image has no {program}",
            c.name
        );
    }
}

// ---------------------------------------------------------------------------
// The conflist

/// The manifest's conflist as libcni hands plugin `i` its config for
/// `version`, with weir's paths moved into `node`.
fn conflist_for(list: &Value, version: &str, node: Option<&TestNode>, node_info: &Path) -> Value {
    let mut list = list.clone();
    list["cniVersion"] = json!(version);
    if let Some(o) = list.as_object_mut() {
        o.remove("cniVersions");
    }
    for p in list["plugins"].as_array_mut().expect("plugins") {
        if p["type"] != "weir" {
            continue;
        }
        p["nodeInfo"] = json!(node_info);
        if let Some(node) = node {
            p["pinRoot"] = json!(node.layout.root());
            p["ipamStateDir"] = json!(node.ipam_dir());
            p["endpointsDir"] = json!(node.endpoints_dir());
            p["logFile"] = json!(node.log_file());
        }
    }
    list
}

#[test]
fn the_conflist_is_accepted_by_weir() {
    let d = deploy();
    let (name, list) = d.conflist();
    // Sorts before the usual names of other plugins' configs.
    assert!(name.starts_with("05-"), "{name}");
    assert_eq!(list["plugins"][0]["type"], "weir", "weir comes first");
    let mut versions: Vec<String> = list["cniVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a version").to_owned())
        .collect();
    versions.push(list["cniVersion"].as_str().expect("cniVersion").to_owned());
    versions.sort();
    versions.dedup();

    // weir speaks every version the list offers.
    let weir = cni::weir_bin();
    let out = cni::invoke(
        &weir,
        &Invocation::new("VERSION", "", "", "", json!({"cniVersion": "1.1.0"})),
        None,
    )
    .expect("VERSION");
    let supported = out.json.expect("VERSION answers JSON")["supportedVersions"].clone();
    for v in &versions {
        assert!(
            supported.as_array().expect("list").contains(&json!(v)),
            "weir does not support {v}: {supported}"
        );
    }
    assert!(
        versions.contains(&"1.1.0".to_owned()),
        "STATUS and GC need 1.1.0"
    );

    let other_plugins: Vec<&Value> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .filter(|p| p["type"] != "weir")
        .collect();
    assert!(
        other_plugins.is_empty(),
        "weir installs only itself: {other_plugins:?}"
    );

    // Without a node, STATUS parses the config and reports the node as not
    // ready (50), not the config as wrong.
    let tmp = TempTree::new("status");
    let missing = tmp.path().join("no-node.json");
    let conf = conflist_for(&list, "1.1.0", None, &missing);
    let mut plugin = conf["plugins"][0].clone();
    plugin["name"] = conf["name"].clone();
    plugin["cniVersion"] = json!("1.1.0");
    plugin["logFile"] = json!(tmp.path().join("cni.log"));
    let out =
        cni::invoke(&weir, &Invocation::new("STATUS", "", "", "", plugin), None).expect("STATUS");
    assert_eq!(out.code(), Some(50), "{} {}", out.stdout, out.stderr);

    // On a node with the datapath loaded: STATUS is ready, and a pod gets
    // its network through the list, in every version it offers.
    let node = TestNode::new(NodeOptions::default()).expect("test node");
    for v in &versions {
        let chain = Chain {
            list: conflist_for(&list, v, Some(&node), &node.node_info_path()),
            resolve: Box::new(|_| cni::weir_bin()),
        };
        if v.as_str() >= "1.1.0" {
            let mut plugin = chain.list["plugins"][0].clone();
            plugin["name"] = chain.list["name"].clone();
            plugin["cniVersion"] = json!(v);
            let out = node
                .weir(&Invocation::new("STATUS", "", "", "", plugin))
                .expect("STATUS");
            assert!(out.success, "STATUS {v}: {} {}", out.stdout, out.stderr);
        }
        let pod = node
            .pod_netns(&format!("d{}", v.replace('.', "")))
            .expect("pod netns");
        let cid = node.container_id(&format!("deploy{}", v.replace('.', "")));
        let netns = pod.path().to_string_lossy().into_owned();
        let mut base = Invocation::new("ADD", &cid, &netns, "eth0", json!({}));
        base.args = cni::kubernetes_args("default", "deploy", &cid);
        let result = chain
            .add(&base, &json!({}), Some(&node.netns))
            .unwrap_or_else(|e| panic!("ADD {v}: {e:#}"));
        assert_eq!(result["cniVersion"], json!(v), "{result}");
        assert!(result["ips"][0]["address"].is_string(), "{result}");
        if v.as_str() >= "0.4.0" {
            chain
                .check(&base, &result, &json!({}), Some(&node.netns))
                .unwrap_or_else(|e| panic!("CHECK {v}: {e:#}"));
        }
        chain
            .del(&base, Some(&result), &json!({}), Some(&node.netns))
            .unwrap_or_else(|e| panic!("DEL {v}: {e:#}"));
    }
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
    let network = list["name"].as_str().expect("network name");
    let pool = weir_ipam::Pool::from_cidrs(&node.options.pod_cidrs).expect("pool");
    let ipam = weir_ipam::Ipam::open(&node.ipam_dir().join(network), pool).expect("ipam");
    assert!(
        ipam.list().expect("allocations").is_empty(),
        "addresses released"
    );
}

// ---------------------------------------------------------------------------
// The install and uninstall scripts

#[test]
fn install_installs_is_idempotent_upgrades_and_leaves_other_files_alone() {
    let d = deploy();
    let node = FakeNode::new("install");
    let conflist = write_manifest_conflist(&d, &node.src());
    let (conflist_name, _) = d.conflist();
    // The init container the script runs in has no capability.
    let sc = d
        .container("install-cni")
        .security_context
        .clone()
        .expect("a securityContext");
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(caps.add.unwrap_or_default().is_empty());
    assert_ne!(sc.privileged, Some(true));
    let v1 = node.src().join("weir-v1");
    let v2 = node.src().join("weir-v2");
    fs::write(&v1, b"#!/bin/sh\necho weir v1\n").expect("v1");
    fs::write(&v2, b"#!/bin/sh\necho weir v2, a longer build\n").expect("v2");
    let others = node.others();
    assert_eq!(others.len(), 8, "{:?}", others.keys());

    // First install.
    let out = must(node.install(&v1, &conflist), "install");
    let bin = node.bin_dir().join("weir");
    let conf = node.conf_dir().join(&conflist_name);
    assert_eq!(fs::read(&bin).expect("binary"), fs::read(&v1).expect("v1"));
    assert_eq!(
        fs::metadata(&bin).expect("meta").permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::read(&conf).expect("conflist"),
        fs::read(&conflist).expect("src")
    );
    assert_eq!(
        fs::metadata(&conf).expect("meta").permissions().mode() & 0o7777,
        0o644
    );
    assert_eq!(node.others(), others, "other plugins' files untouched");
    let installed = snapshot(&node.host_root());
    assert_eq!(
        installed.len(),
        others.len() + 2,
        "no temporary file left: {:?}",
        installed.keys()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("sorts before"), "{stderr}");

    // Again: nothing changes, not even an inode or a timestamp.
    must(node.install(&v1, &conflist), "second install");
    assert_eq!(
        snapshot(&node.host_root()),
        installed,
        "a second run changes nothing"
    );

    // A file with the right content but the wrong mode is fixed.
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o700)).expect("chmod");
    must(node.install(&v1, &conflist), "install over a wrong mode");
    assert_eq!(
        fs::metadata(&bin).expect("meta").permissions().mode() & 0o7777,
        0o755
    );

    // Upgrade: the new binary replaces the old one in place (a new inode:
    // renamed over, never rewritten), the unchanged conflist stays as is.
    let before = snapshot(&node.host_root());
    must(node.install(&v2, &conflist), "upgrade");
    let after = snapshot(&node.host_root());
    assert_eq!(fs::read(&bin).expect("binary"), fs::read(&v2).expect("v2"));
    let key = PathBuf::from("opt/cni/bin/weir");
    assert_ne!(before[&key].2, after[&key].2, "replaced by rename");
    let conf_key = PathBuf::from("etc/cni/net.d").join(&conflist_name);
    assert_eq!(before[&conf_key], after[&conf_key]);
    assert_eq!(node.others(), others);

    // A config that sorts first is reported, and left alone.
    fs::write(node.conf_dir().join("00-first.conf"), b"{}").expect("write");
    let out = must(node.install(&v2, &conflist), "install with a rival");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("00-first.conf sorts before"), "{stderr}");
    assert!(node.conf_dir().join("00-first.conf").exists());
    fs::remove_file(node.conf_dir().join("00-first.conf")).expect("rm");

    // A missing source fails, and changes nothing.
    let before = snapshot(&node.host_root());
    let out = node.install(&node.src().join("nope"), &conflist);
    assert!(!out.status.success());
    assert_eq!(snapshot(&node.host_root()), before);

    // Uninstall, files only: weir's two files go, nothing else does.
    let out = run_script(
        Command::new("sh"),
        "uninstall.sh",
        &[
            ("WEIR_HOST_ROOT", &node.host_root()),
            ("WEIR_SKIP_DATAPATH", Path::new("1")),
        ],
    );
    must(out, "uninstall");
    assert!(!bin.exists() && !conf.exists());
    assert_eq!(node.others(), others);
    assert_eq!(
        snapshot(&node.host_root()),
        others,
        "nothing else left or removed"
    );
    must(
        run_script(
            Command::new("sh"),
            "uninstall.sh",
            &[
                ("WEIR_HOST_ROOT", &node.host_root()),
                ("WEIR_SKIP_DATAPATH", Path::new("1")),
            ],
        ),
        "second uninstall",
    );
    assert_eq!(snapshot(&node.host_root()), others);
}

#[test]
fn a_reader_racing_upgrades_always_sees_one_whole_binary() {
    let d = deploy();
    let node = FakeNode::new("race");
    let conflist = write_manifest_conflist(&d, &node.src());
    // Two versions that differ everywhere and in length: a torn read (part
    // old, part new, or cut short) matches neither.
    let a: Vec<u8> = (0..6 << 20).map(|i: u32| (i % 251) as u8).collect();
    let b: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 241) as u8 ^ 0x5a).collect();
    let (pa, pb) = (node.src().join("weir-a"), node.src().join("weir-b"));
    fs::write(&pa, &a).expect("a");
    fs::write(&pb, &b).expect("b");
    must(node.install(&pa, &conflist), "first install");

    let bin = node.bin_dir().join("weir");
    let stop = Arc::new(AtomicBool::new(false));
    let (seen_a, seen_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (stop, seen_a, seen_b) = (stop.clone(), seen_a.clone(), seen_b.clone());
        let (a, b, bin) = (a.clone(), b.clone(), bin.clone());
        std::thread::spawn(move || -> Result<(), String> {
            while !stop.load(Ordering::Relaxed) {
                let got = fs::read(&bin).map_err(|e| format!("read: {e}"))?;
                if got == a {
                    seen_a.fetch_add(1, Ordering::Relaxed);
                } else if got == b {
                    seen_b.fetch_add(1, Ordering::Relaxed);
                } else {
                    return Err(format!("a torn binary of {} bytes", got.len()));
                }
            }
            Ok(())
        })
    };
    let rounds = 30;
    let mut failed = None;
    for i in 0..rounds {
        let src = if i % 2 == 0 { &pb } else { &pa };
        let out = node.install(src, &conflist);
        if !out.status.success() {
            failed = Some(out);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let read = reader.join().expect("reader thread");
    if let Some(out) = failed {
        must(out, "install");
    }
    read.expect("every read is one whole version");
    let (sa, sb) = (
        seen_a.load(Ordering::Relaxed),
        seen_b.load(Ordering::Relaxed),
    );
    assert!(
        sa > 0 && sb > 0,
        "the reader saw both versions (a {sa}, b {sb})"
    );
    assert_eq!(fs::read(&bin).expect("binary"), a, "the last install wins");
    let leftovers: Vec<_> = fs::read_dir(node.bin_dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().contains("weir-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn uninstall_removes_weir_and_its_datapath_and_nothing_else() {
    let d = deploy();
    let node = FakeNode::new("uninstall");
    let conflist = write_manifest_conflist(&d, &node.src());
    let weir = cni::weir_bin();
    must(node.install(&weir, &conflist), "install");
    let others = node.others();

    // The node's bpffs: the fake root's /sys/fs/bpf leads to a directory of
    // this test's own on the real one. Load the datapath there.
    let bpf = BpfDir::new("uninstall");
    let host = node.host_root();
    fs::create_dir_all(host.join("sys/fs")).expect("sys/fs");
    std::os::unix::fs::symlink(&bpf.0, host.join("sys/fs/bpf")).expect("symlink");
    let pin_root = host.join("sys/fs/bpf/weir");
    must(
        Command::new(weir_node_bin())
            .arg("--pin-root")
            .arg(&pin_root)
            .arg("load")
            .output()
            .expect("weir-node load"),
        "weir-node load",
    );
    assert!(
        bpf.0
            .join("weir")
            .read_dir()
            .expect("pins")
            .next()
            .is_some()
    );
    let node_json = host.join("run/weir/node.json");
    fs::create_dir_all(node_json.parent().expect("dir")).expect("run/weir");
    fs::write(&node_json, b"{}").expect("node.json");
    fs::create_dir_all(host.join("var/lib/weir/ipam/weir")).expect("ipam dir");
    fs::create_dir_all(host.join("var/log/weir")).expect("log dir");
    fs::write(host.join("var/log/weir/cni.log"), b"{}\n").expect("log");

    // A node namespace with a weir route and weir's nftables table.
    let ns = NetNs::new(&format!("wdu{}", random_hex(8))).expect("netns");
    for args in [
        &["link", "add", "up0", "type", "veth", "peer", "name", "up1"][..],
        &["link", "set", "up0", "up"],
        &["link", "set", "up1", "up"],
        &["addr", "add", "192.0.2.1/24", "dev", "up0"],
        &[
            "route",
            "add",
            "10.99.0.0/24",
            "via",
            "192.0.2.2",
            "proto",
            "87",
        ],
        &["route", "add", "10.98.0.0/24", "via", "192.0.2.3"],
    ] {
        ns.ip(args).expect("ip");
    }
    let nft = |args: &[&str]| {
        let mut c = ns.command("nft").expect("nft");
        c.args(args);
        c.output().expect("nft")
    };
    must(nft(&["add", "table", "inet", "weir"]), "nft add table");
    must(nft(&["add", "table", "inet", "other"]), "nft add table");
    let routes = |ns: &NetNs| ns.ip(&["-4", "route", "show"]).expect("routes");
    assert!(routes(&ns).contains("10.99.0.0/24"));

    // Uninstall in the node's namespace, as on a node.
    let out = run_script(
        ns.command("sh").expect("sh in the netns"),
        "uninstall.sh",
        &[("WEIR_HOST_ROOT", &host), ("WEIR_NODE", &weir_node_bin())],
    );
    must(out, "uninstall");
    assert!(!bpf.0.join("weir").exists(), "pins removed");
    assert!(!node_json.exists(), "node.json removed");
    assert!(
        !routes(&ns).contains("10.99.0.0/24"),
        "weir's route removed"
    );
    assert!(routes(&ns).contains("10.98.0.0/24"), "other routes kept");
    assert!(
        !nft(&["list", "table", "inet", "weir"]).status.success(),
        "weir's table removed"
    );
    assert!(
        nft(&["list", "table", "inet", "other"]).status.success(),
        "other tables kept"
    );
    assert!(!node.bin_dir().join("weir").exists());
    assert!(!node.conf_dir().join(d.conflist().0).exists());
    assert_eq!(node.others(), others, "other plugins' files untouched");
    // Without --purge, weir's state and logs stay.
    assert!(host.join("var/log/weir/cni.log").exists());
    assert!(host.join("var/lib/weir/ipam/weir").exists());

    // Again, with --purge: idempotent, and the state goes too.
    let mut c = ns.command("sh").expect("sh");
    c.arg(script("uninstall.sh"))
        .arg("--purge")
        .env_clear()
        .env("PATH", PATH)
        .env("WEIR_HOST_ROOT", &host)
        .env("WEIR_NODE", weir_node_bin());
    must(c.output().expect("uninstall --purge"), "uninstall --purge");
    for p in ["var/lib/weir", "var/log/weir", "run/weir"] {
        assert!(!host.join(p).exists(), "{p} purged");
    }
    assert_eq!(node.others(), others);
}

// ---------------------------------------------------------------------------
// The daemon container

/// The `run` command's arguments and the global ones, from weir-node's own
/// CLI definition.
fn weir_node_run_args() -> Vec<clap::Arg> {
    let mut cli = Cli::command();
    // Built: the global arguments are propagated into `run`, and every
    // argument has its final value parser.
    cli.build();
    cli.find_subcommand("run")
        .expect("weir-node has a run command")
        .get_arguments()
        .cloned()
        .collect()
}

/// `value` through `arg`'s own value parser.
fn parse_with(arg: &clap::Arg, value: &str) -> Result<clap::ArgMatches, clap::Error> {
    clap::Command::new("check")
        .arg(
            clap::Arg::new("v")
                .long("v")
                .action(clap::ArgAction::Set)
                .value_parser(arg.get_value_parser().clone()),
        )
        .try_get_matches_from(["check", "--v", value])
}

#[test]
fn weir_node_accepts_the_containers_command_arguments_and_environment() {
    let d = deploy();
    let daemon = d.daemon();
    let command = daemon.command.clone().expect("command");
    assert_eq!(
        Path::new(&command[0]).file_name().and_then(|n| n.to_str()),
        Some("weir-node")
    );
    let argv: Vec<String> = command[1..]
        .iter()
        .chain(daemon.args.iter().flatten())
        .cloned()
        .collect();

    // The real binary: clap rejects an unknown flag or a bad value before
    // it prints help.
    let run_help = |extra: &[&str]| {
        Command::new(weir_node_bin())
            .args(&argv)
            .args(extra)
            .arg("--help")
            .env_clear()
            .output()
            .expect("run weir-node")
    };
    let out = must(run_help(&[]), "weir-node <manifest args> --help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(help.contains("Usage: weir-node run"), "{help}");
    assert!(
        !run_help(&["--no-such-flag"]).status.success(),
        "the check tells an unknown flag"
    );

    // weir-node's CLI definition: every variable the container sets is one
    // an argument of `run` reads, and its value passes that argument's
    // parser. Then the whole command line, with the variables given as the
    // flags they stand for, parses into what the manifest means.
    let args = weir_node_run_args();
    let mut full: Vec<OsString> = vec!["weir-node".into()];
    full.extend(argv.iter().map(OsString::from));
    let handlers = fs::read_dir(repo().join("node-daemon/src"))
        .expect("node-daemon/src")
        .map(|e| fs::read_to_string(e.expect("entry").path()).unwrap_or_default())
        .collect::<Vec<_>>();
    let env = resolve_env(&d, daemon, "node-a");
    for (name, value) in &env {
        if name == "RUST_LOG" {
            // tracing's EnvFilter reads it, not clap.
            assert!(
                handlers
                    .iter()
                    .any(|src| src.contains("EnvFilter::try_from_default_env")),
                "weir-node no longer reads RUST_LOG"
            );
            continue;
        }
        let arg = args
            .iter()
            .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(name.as_str()))
            .unwrap_or_else(|| panic!("weir-node run reads no variable {name}"));
        let Some(value) = value else { continue };
        let parsed = parse_with(arg, value).unwrap_or_else(|e| panic!("{name}={value:?}: {e}"));
        let long = format!("--{}", arg.get_long().expect("a long flag"));
        if arg.get_action().takes_values() {
            full.push(long.into());
            full.push(value.into());
        } else {
            let on = parsed
                .try_get_one::<bool>("v")
                .unwrap_or_else(|e| panic!("{name}: a flag's value is a bool: {e}"))
                .copied()
                .unwrap_or(false);
            if on {
                full.push(long.into());
            }
        }
    }
    // A value the parser refuses is refused (the check can fail).
    let listen = args
        .iter()
        .find(|a| a.get_long() == Some("listen"))
        .expect("--listen");
    assert!(parse_with(listen, "not an address").is_err());
    let no_masquerade = args
        .iter()
        .find(|a| a.get_long() == Some("no-masquerade"))
        .expect("--no-masquerade");
    assert!(
        parse_with(no_masquerade, "yes").is_err(),
        "a flag's variable is true or false"
    );

    let parsed = Cli::try_parse_from(&full).unwrap_or_else(|e| panic!("{full:?}: {e}"));
    let Cmd::Run(run) = parsed.command else {
        panic!("{full:?} is not `run`")
    };
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(run.node_name, "node-a");
    assert_eq!(run.listen, listen_addr(&d));
    assert!(
        run.nodes_dir.is_none() && run.kubeconfig.is_none(),
        "the Kubernetes API"
    );
    if let Some(v) = get("WEIR_RESYNC_SECONDS") {
        assert_eq!(run.resync_seconds.to_string(), v);
    }
    if let Some(v) = get("WEIR_HYGIENE_SECONDS") {
        assert_eq!(run.hygiene_seconds.to_string(), v);
    }
    if let Some(v) = get("WEIR_NO_MASQUERADE") {
        assert_eq!(run.no_masquerade.to_string(), v);
    }
    // The state paths are weir-node's defaults: the host's, which the
    // DaemonSet mounts at the same place.
    assert_eq!(parsed.paths.pin_root, Path::new("/sys/fs/bpf/weir"));
    assert_eq!(parsed.paths.node_json, Path::new("/run/weir/node.json"));
    assert!(parsed.paths.endpoints_dir.starts_with("/run/weir"));
}

#[test]
fn the_daemon_container_runs_and_answers_its_probes_with_only_its_capabilities() {
    let d = deploy();
    let daemon = d.daemon();
    let sc = daemon.security_context.as_ref().expect("a securityContext");
    assert_ne!(sc.privileged, Some(true));
    assert_eq!(sc.run_as_user, Some(0));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let add = daemon_capabilities(&d);
    assert!(
        !add.contains(&"SYS_ADMIN".to_owned()),
        "no SYS_ADMIN: {add:?}"
    );
    let mask: u64 = add.iter().map(|c| 1u64 << capability_number(c)).sum();
    let bounding = std::iter::once("-all".to_owned())
        .chain(add.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");

    let tmp = TempTree::new("run");
    let bpf = BpfDir::new("run");
    let ns = NetNs::new(&format!("wdr{}", random_hex(8))).expect("netns");
    for args in [
        &["link", "add", "up0", "type", "veth", "peer", "name", "up1"][..],
        &["link", "set", "up0", "up"],
        &["link", "set", "up1", "up"],
        &["addr", "add", "192.0.2.10/24", "dev", "up0"],
        &["route", "add", "default", "via", "192.0.2.254"],
    ] {
        ns.ip(args).expect("ip");
    }
    let node_name = format!("deploy-{}", random_hex(6));
    let nodes = tmp.path().join("nodes");
    fs::create_dir_all(&nodes).expect("nodes dir");
    fs::write(
        nodes.join("node.yaml"),
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {node_name}\nspec:\n  podCIDRs:\n  - 10.123.0.0/24\n\
             status:\n  addresses:\n  - type: InternalIP\n    address: \"192.0.2.10\"\n"
        ),
    )
    .expect("node manifest");

    // The container's command and environment, as the kubelet resolves
    // them, with the node state moved into this test's own places and the
    // API server replaced by the manifest directory.
    let command: Vec<String> = daemon
        .command
        .iter()
        .flatten()
        .chain(daemon.args.iter().flatten())
        .cloned()
        .collect();
    let mut cmd = ns.command("setpriv").expect("setpriv");
    if sc.allow_privilege_escalation == Some(false) {
        cmd.arg("--no-new-privs");
    }
    cmd.arg("--inh-caps=-all")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--")
        .arg(weir_node_bin())
        .args(&command[1..])
        .env_clear()
        .env("PATH", PATH);
    let mut env: BTreeMap<String, OsString> = BTreeMap::new();
    for (k, v) in resolve_env(&d, daemon, &node_name) {
        if let Some(v) = v {
            env.insert(k, v.into());
        }
    }
    let pin_root = bpf.0.join("weir");
    env.insert("WEIR_PIN_ROOT".into(), pin_root.clone().into());
    env.insert(
        "WEIR_NODE_JSON".into(),
        tmp.path().join("run/node.json").into(),
    );
    env.insert(
        "WEIR_ENDPOINTS_DIR".into(),
        tmp.path().join("run/endpoints").into(),
    );
    env.insert("WEIR_NODES_DIR".into(), nodes.clone().into());
    cmd.envs(&env);
    let log = tmp.path().join("weir-node.log");
    cmd.stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("log"));
    let mut child = Reaped(cmd.spawn().expect("start weir-node"));
    let show_log = || fs::read_to_string(&log).unwrap_or_default();

    // It runs (setpriv has exec'd it) with exactly the manifest's
    // capabilities.
    let pid = child.0.id();
    wait_for(30, "setpriv to start weir-node", &show_log, || {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "weir-node").then_some(())
    });
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16),
        Ok(mask),
        "{status}"
    );
    assert_eq!(
        u64::from_str_radix(&field("CapBnd:"), 16),
        Ok(mask),
        "{status}"
    );

    // The probes, exactly as declared, answer.
    let listen = listen_addr(&d);
    for (what, probe) in [
        ("startup", &daemon.startup_probe),
        ("liveness", &daemon.liveness_probe),
        ("readiness", &daemon.readiness_probe),
    ] {
        let Some(probe) = probe else { continue };
        let (port, path) = (probe_port(daemon, probe), probe_path(probe));
        assert_eq!(port, listen.port());
        wait_for(90, &format!("the {what} probe {path}"), &show_log, || {
            if let Ok(Some(st)) = child.0.try_wait() {
                panic!("weir-node exited ({st}):\n{}", show_log());
            }
            (http_get(&ns, port, &path)?.0 == 200).then_some(())
        });
    }

    // The datapath is loaded, node.json written, and the masquerade rule
    // present exactly when the ConfigMap asks for it.
    assert!(pin_root.join("maps").is_dir());
    let info = weir_datapath::node_info::NodeInfo::read(&tmp.path().join("run/node.json"))
        .expect("node.json");
    assert_eq!(info.node_name, node_name);
    let masquerade = !matches!(
        env.get("WEIR_NO_MASQUERADE").and_then(|v| v.to_str()),
        Some("true")
    );
    let mut nft = ns.command("nft").expect("nft");
    nft.args(["list", "table", "inet", "weir"]);
    let has_table = nft.output().expect("nft").status.success();
    assert_eq!(
        has_table,
        masquerade,
        "masquerade table; log:\n{}",
        show_log()
    );

    // SIGTERM ends it well within the grace period, with success.
    let grace = d.pod().termination_grace_period_seconds.unwrap_or(30);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(u64::try_from(grace).expect("grace"));
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "weir-node outlived the grace period"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}; log:\n{}", show_log());
    drop(ns);
    let _ = weir_datapath::loader::unpin_all(&weir_datapath::PinLayout::new(&pin_root));
}

/// The capabilities the daemon container adds (to none: it drops ALL).
fn daemon_capabilities(d: &Deploy) -> Vec<String> {
    let sc = d
        .daemon()
        .security_context
        .as_ref()
        .expect("a securityContext");
    sc.capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

#[test]
fn each_capability_of_the_daemon_is_needed_to_load_the_datapath() {
    let d = deploy();
    let caps = daemon_capabilities(&d);
    let load = |caps: &[&String]| {
        let bpf = BpfDir::new("caps");
        let bounding = std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
            .collect::<Vec<_>>()
            .join(",");
        let out = Command::new("setpriv")
            .args(["--no-new-privs", "--inh-caps=-all"])
            .arg(format!("--bounding-set={bounding}"))
            .arg("--")
            .arg(weir_node_bin())
            .arg("--pin-root")
            .arg(bpf.0.join("weir"))
            .arg("load")
            .env_clear()
            .env("PATH", PATH)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("setpriv weir-node load");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let all: Vec<&String> = caps.iter().collect();
    let (ok, err) = load(&all);
    assert!(ok, "weir-node load with {caps:?}: {err}");
    // Least privilege: without any one of them, the datapath does not load.
    for missing in &caps {
        let fewer: Vec<&String> = caps.iter().filter(|c| c != &missing).collect();
        let (ok, err) = load(&fewer);
        assert!(
            !ok,
            "{missing} is not needed: weir-node loads with {fewer:?}"
        );
        assert!(err.contains("loading the datapath"), "{missing}: {err}");
    }
}

#[test]
fn the_bpffs_init_container_mounts_bpffs_only_where_it_is_missing() {
    let d = deploy();
    let init = d.container("mount-bpffs");
    let command = init.command.clone().expect("a command");
    // In a private mount namespace, hide the host's bpffs under a tmpfs,
    // run the container's command twice, and count the mounts.
    let wrapper = r#"
        count() { grep -c ' /sys/fs/bpf ' /proc/self/mountinfo; }
        mount -t tmpfs weir-test /sys/fs/bpf
        echo "before $(stat -f -c %T /sys/fs/bpf) $(count)"
        "$@"
        echo "first $(stat -f -c %T /sys/fs/bpf) $(count)"
        "$@"
        echo "second $(stat -f -c %T /sys/fs/bpf) $(count)"
    "#;
    let out = must(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-ec",
                wrapper,
                "sh",
            ])
            .args(&command)
            .output()
            .expect("unshare"),
        "the init container's command",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |tag: &str| -> (String, u32) {
        let l = text
            .lines()
            .find(|l| l.starts_with(tag))
            .unwrap_or_else(|| panic!("no {tag} line: {text}"));
        let mut f = l.split_whitespace().skip(1);
        (
            f.next().expect("fs type").to_owned(),
            f.next().expect("count").parse().expect("a count"),
        )
    };
    let (before, second) = (line("before"), line("second"));
    let first = line("first");
    assert_eq!(before.0, "tmpfs", "{text}");
    assert_eq!(first.0, "bpf_fs", "{text}");
    assert_eq!(first.1, before.1 + 1, "one mount added: {text}");
    assert_eq!(second, first, "nothing mounted over bpffs: {text}");
}

#[test]
fn the_conflist_passes_cni_conformance() {
    let d = deploy();
    let (_, mut list) = d.conflist();
    // Every version the list offers, on a weir node of the run's own.
    let mut versions: Vec<String> = list["cniVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a version").to_owned())
        .collect();
    versions.push(list["cniVersion"].as_str().expect("cniVersion").to_owned());
    versions.sort();
    versions.dedup();
    for p in list["plugins"].as_array_mut().expect("plugins") {
        if p["type"] == "weir" {
            p["pinRoot"] = json!("${PIN_ROOT}");
            p["nodeInfo"] = json!("${NODE_INFO}");
            p["ipamStateDir"] = json!("${RUN_DIR}/ipam");
            p["endpointsDir"] = json!("${RUN_DIR}/endpoints");
            p["logFile"] = json!("${RUN_DIR}/cni.log");
        }
    }
    let tmp = TempTree::new("cc");
    let config = tmp.path().join("weir.conflist");
    fs::write(&config, serde_json::to_vec_pretty(&list).expect("json")).expect("write");
    let weir = cni::weir_bin();
    let out = Command::new(env!("CARGO_BIN_EXE_cni-conformance"))
        .arg("--plugin-dir")
        .arg(weir.parent().expect("the binaries' directory"))
        .arg("--config")
        .arg(&config)
        .arg("--weir-node")
        .arg("--versions")
        .arg(versions.join(","))
        .output()
        .expect("run cni-conformance");
    must(out, "cni-conformance on the manifest's conflist");
}
