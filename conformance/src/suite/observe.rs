//! What is really there: the result of an ADD compared with the links,
//! addresses and routes of the namespaces (as `ip -j` reports them), what a
//! DEL left behind, and snapshots that tell whether a failed call created
//! anything.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde_json::Value;

use super::runtime::Runtime;
use crate::netns::NetNs;

/// Every way the namespaces disagree with `result`; empty means they agree.
///
/// Interfaces with a `sandbox` must be in `sandbox` (and it must be the path
/// the runtime gave), the others in the host namespace; MACs and 1.1.0 MTUs
/// must match; each address must be on the interface its `interface` index
/// names (or, without one, on some sandbox link); each route must be in the
/// sandbox's table, with its gateway when the result gives one.
pub fn result_vs_netns(
    rt: &Runtime,
    result: &Value,
    sandbox: &NetNs,
    ifname: &str,
) -> Result<Vec<String>> {
    let mut errs = Vec::new();
    let sandbox_path = sandbox.path().display().to_string();
    let ifaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    // Where each interface of the result lives.
    let mut homes: Vec<Option<&NetNs>> = Vec::new();
    for (i, iface) in ifaces.iter().enumerate() {
        let name = iface["name"].as_str().unwrap_or_default();
        let in_sandbox = iface["sandbox"].as_str().is_some_and(|s| !s.is_empty());
        if in_sandbox && iface["sandbox"] != sandbox_path.as_str() {
            errs.push(format!(
                "interfaces[{i}] ({name}) names sandbox {}, the runtime gave {sandbox_path}",
                iface["sandbox"]
            ));
        }
        let ns = if in_sandbox { sandbox } else { &rt.host };
        let link = match link(ns, name)? {
            Some(l) => l,
            None => {
                errs.push(format!(
                    "interfaces[{i}] ({name}) does not exist in the {} namespace",
                    if in_sandbox { "sandbox" } else { "host" }
                ));
                homes.push(None);
                continue;
            }
        };
        homes.push(Some(ns));
        if let Some(mac) = iface["mac"].as_str() {
            let real = link["address"].as_str().unwrap_or_default();
            if !real.eq_ignore_ascii_case(mac) {
                errs.push(format!(
                    "interfaces[{i}] ({name}) has MAC {real}, the result says {mac}"
                ));
            }
        }
        if let Some(mtu) = iface.get("mtu").and_then(Value::as_u64)
            && link["mtu"].as_u64() != Some(mtu)
        {
            errs.push(format!(
                "interfaces[{i}] ({name}) has MTU {}, the result says {mtu}",
                link["mtu"]
            ));
        }
    }
    let in_sandbox_named = ifaces
        .iter()
        .any(|i| i["name"] == ifname && i["sandbox"].as_str().is_some_and(|s| !s.is_empty()));
    if !in_sandbox_named {
        errs.push(format!(
            "no interface of the result is CNI_IFNAME {ifname} in the sandbox"
        ));
    }
    if link(sandbox, ifname)?.is_none() {
        errs.push(format!("there is no {ifname} in the sandbox"));
    }

    for (i, ip) in result["ips"].as_array().into_iter().flatten().enumerate() {
        let Some(addr) = ip["address"]
            .as_str()
            .and_then(|a| a.parse::<IpNetwork>().ok())
        else {
            continue;
        };
        let want = format!("{}/{}", addr.ip(), addr.prefix());
        match ip["interface"].as_u64() {
            Some(idx) => {
                let idx = idx as usize;
                let (Some(iface), Some(Some(ns))) = (ifaces.get(idx), homes.get(idx)) else {
                    continue;
                };
                let name = iface["name"].as_str().unwrap_or_default();
                let have = ns.addresses(name)?;
                if !have.contains(&want) {
                    errs.push(format!("ips[{i}] {want} is not on {name}: it has {have:?}"));
                }
            }
            None => {
                let mut found = false;
                for l in sandbox.link_names()? {
                    found |= sandbox.addresses(&l)?.contains(&want);
                }
                if !found {
                    errs.push(format!("ips[{i}] {want} is on no link of the sandbox"));
                }
            }
        }
    }

    for (i, r) in result["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(dst) = r["dst"].as_str().and_then(|d| d.parse::<IpNetwork>().ok()) else {
            continue;
        };
        let gw = r["gw"].as_str().and_then(|g| g.parse::<IpAddr>().ok());
        let table = sandbox.ip_json(&[
            if dst.is_ipv4() { "-4" } else { "-6" },
            "route",
            "show",
            "table",
            "all",
        ])?;
        let found = table.as_array().into_iter().flatten().any(|route| {
            route_dst(route).is_some_and(|d| d == dst)
                && gw.is_none_or(|g| {
                    route["gateway"]
                        .as_str()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        == Some(g)
                })
        });
        if !found {
            errs.push(format!(
                "routes[{i}] {r} is not in the sandbox's routing tables"
            ));
        }
    }
    Ok(errs)
}

/// A route's destination as `ip -j route` prints it ("default", a bare
/// address, or a CIDR).
fn route_dst(route: &Value) -> Option<IpNetwork> {
    let d = route["dst"].as_str()?;
    let v6 = route["gateway"].as_str().is_some_and(|g| g.contains(':'))
        || route["prefsrc"].as_str().is_some_and(|g| g.contains(':'))
        || d.contains(':');
    if d == "default" {
        return if v6 {
            "::/0".parse().ok()
        } else {
            "0.0.0.0/0".parse().ok()
        };
    }
    d.parse().ok()
}

/// One link of `ns` with details, or `None` when it does not exist.
pub fn link(ns: &NetNs, name: &str) -> Result<Option<Value>> {
    if !ns.link_names()?.iter().any(|l| l == name) {
        return Ok(None);
    }
    let v = ns.ip_json(&["-d", "link", "show", "dev", name])?;
    Ok(v.get(0).cloned())
}

/// What a DEL should have removed but did not: the sandbox interface, host
/// interfaces of the result that were made for this container (a shared
/// bridge stays), and files of the run's state that still name the
/// container.
pub fn leftovers_after_del(
    rt: &Runtime,
    result: Option<&Value>,
    sandbox: Option<&NetNs>,
    ifname: &str,
    container_id: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(ns) = sandbox
        && link(ns, ifname)?.is_some()
    {
        out.push(format!("{ifname} is still in the sandbox"));
    }
    if let Some(r) = result {
        for iface in r["interfaces"].as_array().into_iter().flatten() {
            if iface["sandbox"].as_str().is_some_and(|s| !s.is_empty()) {
                continue;
            }
            let name = iface["name"].as_str().unwrap_or_default();
            if let Some(l) = link(&rt.host, name)? {
                let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or_default();
                if kind != "bridge" {
                    out.push(format!("host interface {name} ({kind}) is still there"));
                }
            }
        }
    }
    for f in state_mentioning(&rt.run_dir, container_id)? {
        out.push(format!(
            "state file {} still names the container",
            f.display()
        ));
    }
    Ok(out)
}

/// The files under `dir` (logs left out) whose name or content contains
/// `needle`: a plugin's record of an attachment.
pub fn state_mentioning(dir: &Path, needle: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for f in state_files(dir)? {
        let named = f
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains(needle));
        let content = std::fs::read(&f).unwrap_or_default();
        let in_content = content
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes());
        if named || in_content {
            out.push(f);
        }
    }
    Ok(out)
}

/// The regular files under `dir`, except logs.
pub fn state_files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("read {}", d.display())),
        };
        for e in entries {
            let e = e?;
            let ty = e.file_type()?;
            let p = e.path();
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_file() && p.extension().is_none_or(|x| x != "log") {
                out.insert(p);
            }
        }
    }
    Ok(out)
}

/// The observable state of a run: host links, the sandbox's links and the
/// state files. A call that failed must leave it as it was.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    host_links: BTreeSet<String>,
    sandbox_links: BTreeSet<String>,
    files: BTreeSet<PathBuf>,
}

impl Snapshot {
    pub fn take(rt: &Runtime, sandbox: &NetNs) -> Result<Snapshot> {
        Ok(Snapshot {
            host_links: rt.host.link_names()?.into_iter().collect(),
            sandbox_links: sandbox.link_names()?.into_iter().collect(),
            files: state_files(&rt.run_dir)?,
        })
    }

    /// What `after` has that `self` had not.
    pub fn created(&self, after: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for l in after.host_links.difference(&self.host_links) {
            out.push(format!("host link {l}"));
        }
        for l in after.sandbox_links.difference(&self.sandbox_links) {
            out.push(format!("sandbox link {l}"));
        }
        for f in after.files.difference(&self.files) {
            out.push(format!("state file {}", f.display()));
        }
        out
    }
}
