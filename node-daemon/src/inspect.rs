//! Inspection of the pins, usable while the daemon is down: every command
//! opens the pinned maps through the `weir-datapath` wrappers and prints a
//! table or JSON.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;
use weir_common::ABI_VERSION;
use weir_datapath::{
    PinLayout,
    endpoint_info::EndpointInfo,
    loader,
    maps::{DropMap, EndpointMap, MetaMap, NodeMap, TrafficMap},
    node_info::NodeInfo,
    object,
};

use crate::hygiene::ifname_of;

/// Output format of the inspection commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Formats rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut parts = Vec::new();
        for (cell, w) in cells.zip(&widths) {
            parts.push(format!("{cell:<w$}"));
        }
        out.push_str(parts.join("   ").trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn mac(b: [u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn records_by_ifindex(endpoints_dir: &Path) -> BTreeMap<u32, EndpointInfo> {
    EndpointInfo::list(endpoints_dir)
        .0
        .into_iter()
        .map(|r| (r.host_ifindex, r))
        .collect()
}

fn pod_of(records: &BTreeMap<u32, EndpointInfo>, ifindex: u32) -> Option<String> {
    let r = records.get(&ifindex)?;
    match (&r.pod_namespace, &r.pod_name) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        _ => Some(r.container_id.clone()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub interface: Option<String>,
    pub mac: String,
    pub host_mac: String,
    pub flags: u32,
    pub pod: Option<String>,
}

pub fn endpoints(layout: &PinLayout, endpoints_dir: &Path, output: Output) -> Result<String> {
    let records = records_by_ifindex(endpoints_dir);
    let rows: Vec<EndpointRow> = EndpointMap::open(layout)?
        .list()?
        .into_iter()
        .map(|(ip, ep)| EndpointRow {
            ip,
            ifindex: ep.ifindex,
            interface: ifname_of(ep.ifindex),
            mac: mac(ep.mac),
            host_mac: mac(ep.host_mac),
            flags: ep.flags,
            pod: pod_of(&records, ep.ifindex),
        })
        .collect();
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Table => table(
            &[
                "IP",
                "IFINDEX",
                "INTERFACE",
                "MAC",
                "HOST MAC",
                "FLAGS",
                "POD",
            ],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.ip.to_string(),
                        r.ifindex.to_string(),
                        r.interface.clone().unwrap_or_else(|| "-".into()),
                        r.mac.clone(),
                        r.host_mac.clone(),
                        format!("{:#x}", r.flags),
                        r.pod.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    pub cidr: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddr,
}

pub fn nodes(layout: &PinLayout, output: Output) -> Result<String> {
    let rows: Vec<NodeRow> = NodeMap::open(layout)?
        .list()?
        .into_iter()
        .map(|(net, len, node_ip)| NodeRow {
            cidr: format!("{net}/{len}"),
            node_ip,
        })
        .collect();
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Table => table(
            &["POD CIDR", "NODE IP"],
            &rows
                .iter()
                .map(|r| vec![r.cidr.clone(), r.node_ip.to_string()])
                .collect::<Vec<_>>(),
        ),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterRow {
    pub ifindex: u32,
    pub interface: Option<String>,
    pub pod: Option<String>,
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
    /// Drops by reason name.
    pub drops: BTreeMap<&'static str, u64>,
}

pub fn counters(layout: &PinLayout, endpoints_dir: &Path, output: Output) -> Result<String> {
    let records = records_by_ifindex(endpoints_dir);
    let traffic = TrafficMap::open(layout)?.totals()?;
    let drops = DropMap::open(layout)?.totals()?;
    let blank = |ifindex: u32| CounterRow {
        ifindex,
        interface: ifname_of(ifindex),
        pod: pod_of(&records, ifindex),
        from_pod_packets: 0,
        from_pod_bytes: 0,
        to_pod_packets: 0,
        to_pod_bytes: 0,
        drops: BTreeMap::new(),
    };
    let mut rows: BTreeMap<u32, CounterRow> = BTreeMap::new();
    for (ifindex, t) in &traffic {
        let r = rows.entry(*ifindex).or_insert_with(|| blank(*ifindex));
        r.from_pod_packets = t.from_pod_packets;
        r.from_pod_bytes = t.from_pod_bytes;
        r.to_pod_packets = t.to_pod_packets;
        r.to_pod_bytes = t.to_pod_bytes;
    }
    for ((ifindex, reason), n) in &drops {
        let r = rows.entry(*ifindex).or_insert_with(|| blank(*ifindex));
        r.drops.insert(reason.name(), *n);
    }
    let rows: Vec<CounterRow> = rows.into_values().collect();
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Table => table(
            &[
                "IFINDEX",
                "INTERFACE",
                "POD",
                "FROM-POD PKTS",
                "FROM-POD BYTES",
                "TO-POD PKTS",
                "TO-POD BYTES",
                "DROPS",
            ],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.ifindex.to_string(),
                        r.interface.clone().unwrap_or_else(|| "-".into()),
                        r.pod.clone().unwrap_or_else(|| "-".into()),
                        r.from_pod_packets.to_string(),
                        r.from_pod_bytes.to_string(),
                        r.to_pod_packets.to_string(),
                        r.to_pod_bytes.to_string(),
                        if r.drops.is_empty() {
                            "-".into()
                        } else {
                            r.drops
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub pin_root: String,
    pub pins_present: bool,
    pub abi_version: Option<u32>,
    pub this_build_abi_version: u32,
    pub object_digest: Option<String>,
    pub this_build_object_digest: String,
    pub programs: BTreeMap<&'static str, u32>,
    pub endpoints: Option<usize>,
    pub remote_pod_cidrs: Option<usize>,
    pub node_info: Option<NodeInfo>,
    /// Whether weir's masquerade table is installed (`None`: nft missing).
    pub masquerade: Option<bool>,
    /// Problems found while gathering the status.
    pub errors: Vec<String>,
}

pub fn status(layout: &PinLayout, node_json: &Path) -> Status {
    let mut errors = Vec::new();
    let pins_present = layout.is_loaded();
    let meta = if pins_present {
        MetaMap::open(layout)
            .and_then(|m| m.get())
            .map_err(|e| errors.push(e.to_string()))
            .ok()
    } else {
        None
    };
    let programs = if pins_present {
        loader::pinned_program_ids(layout)
            .map_err(|e| errors.push(e.to_string()))
            .unwrap_or_default()
            .into_iter()
            .collect()
    } else {
        BTreeMap::new()
    };
    let endpoints = pins_present
        .then(|| {
            EndpointMap::open(layout)
                .and_then(|m| m.list())
                .map_err(|e| errors.push(e.to_string()))
                .ok()
                .map(|l| l.len())
        })
        .flatten();
    let remote_pod_cidrs = pins_present
        .then(|| {
            NodeMap::open(layout)
                .and_then(|m| m.list())
                .map_err(|e| errors.push(e.to_string()))
                .ok()
                // Host entries (other nodes' own addresses) are not pod CIDRs.
                .map(|l| {
                    l.iter()
                        .filter(|(net, len, _)| {
                            u32::from(*len) < if net.is_ipv4() { 32 } else { 128 }
                        })
                        .count()
                })
        })
        .flatten();
    let node_info = match NodeInfo::read(node_json) {
        Ok(i) => Some(i),
        Err(e) => {
            errors.push(e.to_string());
            None
        }
    };
    if !pins_present {
        errors.push(format!(
            "datapath pins are missing under {}",
            layout.root().display()
        ));
    }
    Status {
        pin_root: layout.root().display().to_string(),
        pins_present,
        abi_version: meta.map(|m| m.abi_version),
        this_build_abi_version: ABI_VERSION,
        object_digest: meta.map(|m| hex(&m.object_digest)),
        this_build_object_digest: hex(&object::digest()),
        programs,
        endpoints,
        remote_pod_cidrs,
        node_info,
        masquerade: crate::masquerade::present().ok(),
        errors,
    }
}

pub fn render_status(s: &Status, output: Output) -> Result<String> {
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(s).context("status as JSON")? + "\n");
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut rows = vec![
        vec!["Pin root".into(), s.pin_root.clone()],
        vec![
            "Pins present".into(),
            if s.pins_present { "yes" } else { "no" }.into(),
        ],
        vec![
            "ABI version".into(),
            format!(
                "{} (this build: {})",
                opt(s.abi_version.map(|v| v.to_string())),
                s.this_build_abi_version
            ),
        ],
        vec![
            "Object digest".into(),
            format!(
                "{} (this build: {})",
                opt(s.object_digest.clone()),
                s.this_build_object_digest
            ),
        ],
    ];
    for (name, id) in &s.programs {
        rows.push(vec![format!("Program {name}"), format!("id {id}")]);
    }
    rows.push(vec![
        "Endpoints".into(),
        opt(s.endpoints.map(|v| v.to_string())),
    ]);
    rows.push(vec![
        "Remote pod CIDRs".into(),
        opt(s.remote_pod_cidrs.map(|v| v.to_string())),
    ]);
    match &s.node_info {
        Some(i) => {
            rows.push(vec!["Node".into(), i.node_name.clone()]);
            rows.push(vec![
                "Pod CIDRs".into(),
                i.pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
            rows.push(vec![
                "Node IPs".into(),
                i.node_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
            rows.push(vec!["MTU".into(), i.mtu.to_string()]);
        }
        None => rows.push(vec!["Node info".into(), "-".into()]),
    }
    rows.push(vec![
        "Masquerade rule".into(),
        match s.masquerade {
            Some(true) => "installed",
            Some(false) => "absent",
            None => "unknown (nft not available)",
        }
        .into(),
    ]);
    for e in &s.errors {
        rows.push(vec!["Error".into(), e.clone()]);
    }
    Ok(table(&["FIELD", "VALUE"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(
            &["A", "LONG HEADER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A           LONG HEADER\nwide cell   x\ny           z\n");
    }

    #[test]
    fn macs_and_digests_are_lower_hex() {
        assert_eq!(mac([0x02, 0, 0xab, 0, 0, 1]), "02:00:ab:00:00:01");
        assert_eq!(hex(&[0xde, 0xad, 1]), "dead01");
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub frontend: String,
    pub proto: &'static str,
    pub scope: &'static str,
    pub id: u32,
    pub affinity_timeout_s: Option<u32>,
    pub backends: Vec<String>,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        _ => "?",
    }
}

fn socket(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

pub fn services(layout: &PinLayout, output: Output) -> Result<String> {
    use weir_datapath::services::{Scope, ServiceMaps};
    let rows: Vec<ServiceRow> = ServiceMaps::open(layout)?
        .list()?
        .into_iter()
        .map(|(f, svc, backends)| ServiceRow {
            frontend: socket(f.ip, f.port),
            proto: proto_name(f.proto),
            scope: match f.scope {
                Scope::ClusterIp => "ClusterIP",
                Scope::NodePort => "NodePort",
            },
            id: svc.id,
            affinity_timeout_s: (svc.flags & weir_common::SERVICE_F_AFFINITY != 0)
                .then_some(svc.affinity_timeout_s),
            backends: backends.iter().map(|b| socket(b.ip, b.port)).collect(),
        })
        .collect();
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Table => table(
            &["FRONTEND", "PROTO", "SCOPE", "ID", "AFFINITY", "BACKENDS"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.frontend.clone(),
                        r.proto.to_string(),
                        r.scope.to_string(),
                        r.id.to_string(),
                        r.affinity_timeout_s
                            .map(|t| format!("{t}s"))
                            .unwrap_or_default(),
                        r.backends.join(" "),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CtRow {
    pub client: String,
    pub frontend: String,
    pub proto: &'static str,
    pub backend: String,
    pub service_id: u32,
    pub closing: bool,
    /// Seconds since the flow's last packet.
    pub idle_s: f64,
}

pub fn conntrack(layout: &PinLayout, output: Output) -> Result<String> {
    use weir_common::IpKey;
    use weir_datapath::services::{BackendAddr, ServiceMaps, monotonic_now_ns};
    let now = monotonic_now_ns();
    let mut rows: Vec<CtRow> = ServiceMaps::open(layout)?
        .conntrack()?
        .into_iter()
        .map(|(k, v)| {
            let b = BackendAddr::from_map(&v.backend);
            CtRow {
                client: socket(
                    IpAddr::from(IpKey { addr: k.src }),
                    u16::from_be(k.sport_be),
                ),
                frontend: socket(
                    IpAddr::from(IpKey { addr: k.dst }),
                    u16::from_be(k.dport_be),
                ),
                proto: proto_name(k.proto),
                backend: socket(b.ip, b.port),
                service_id: v.service_id,
                closing: v.flags & weir_common::CT_F_CLOSING != 0,
                idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.frontend, &a.client).cmp(&(&b.frontend, &b.client)));
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
        Output::Table => table(
            &[
                "CLIENT", "FRONTEND", "PROTO", "BACKEND", "SVC", "STATE", "IDLE",
            ],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        r.client.clone(),
                        r.frontend.clone(),
                        r.proto.to_string(),
                        r.backend.clone(),
                        r.service_id.to_string(),
                        if r.closing { "closing" } else { "open" }.to_string(),
                        format!("{:.1}s", r.idle_s),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    })
}
