//! The daemon's own counters and the Prometheus text rendering of them and
//! of the datapath's maps.

use std::{
    collections::BTreeMap,
    fmt::Write,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use weir_common::{DropReason, Traffic, capacity, map_names};
use weir_datapath::{
    PinLayout,
    endpoint_info::EndpointInfo,
    maps::{DropMap, EndpointMap, NodeMap, TrafficMap},
};

/// Counters and readiness flags shared by the daemon's tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub source_errors: AtomicU64,
    pub stale_endpoints_removed: AtomicU64,
    pub stale_links_removed: AtomicU64,
    pub stale_records_removed: AtomicU64,
    pub remote_cidrs: AtomicU64,
    pub datapath_loaded: AtomicBool,
    pub node_info_written: AtomicBool,
    pub nodes_synced: AtomicBool,
    pub service_syncs: AtomicU64,
    pub service_sync_errors: AtomicU64,
    /// Frontends in the last desired state.
    pub service_frontends: AtomicU64,
    /// Microseconds from the last service event to its maps being written.
    pub last_service_sync_us: AtomicU64,
    pub service_sync_us_total: AtomicU64,
    pub udp_flows_purged: AtomicU64,
    pub ct_expired: AtomicU64,
}

impl Stats {
    pub fn record_reconcile(&self, ok: bool) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn record_service_sync(&self, ok: bool, frontends: usize, micros: u64, purged: usize) {
        self.service_syncs.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.service_sync_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.service_frontends
            .store(frontends as u64, Ordering::Relaxed);
        self.last_service_sync_us.store(micros, Ordering::Relaxed);
        self.service_sync_us_total
            .fetch_add(micros, Ordering::Relaxed);
        self.udp_flows_purged
            .fetch_add(purged as u64, Ordering::Relaxed);
    }

    pub fn set_remote_cidrs(&self, n: usize) {
        self.remote_cidrs.store(n as u64, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.datapath_loaded.load(Ordering::Acquire)
            && self.node_info_written.load(Ordering::Acquire)
            && self.nodes_synced.load(Ordering::Acquire)
    }
}

/// Labels of one endpoint's series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointLabels {
    pub namespace: String,
    pub pod: String,
    pub interface: String,
}

/// Everything one scrape shows, read from the maps and records.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub traffic: BTreeMap<u32, Traffic>,
    pub drops: BTreeMap<(u32, DropReason), u64>,
    /// Labels by host ifindex.
    pub labels: BTreeMap<u32, EndpointLabels>,
    /// (map name, entries, capacity).
    pub maps: Vec<(&'static str, u64, u32)>,
    /// Maps that could not be read, with the error.
    pub map_errors: Vec<(&'static str, String)>,
}

impl Snapshot {
    /// Reads the pinned maps and the CNI's endpoint records.
    pub fn read(layout: &PinLayout, endpoints_dir: &Path) -> Snapshot {
        let mut snap = Snapshot::default();
        let (records, _) = EndpointInfo::list(endpoints_dir);
        for r in records {
            snap.labels.insert(
                r.host_ifindex,
                EndpointLabels {
                    namespace: r.pod_namespace.unwrap_or_default(),
                    pod: r.pod_name.unwrap_or_default(),
                    interface: r.host_ifname,
                },
            );
        }
        match EndpointMap::open(layout).and_then(|m| m.list()) {
            Ok(l) => snap
                .maps
                .push((map_names::ENDPOINTS, l.len() as u64, capacity::ENDPOINTS)),
            Err(e) => snap.map_errors.push((map_names::ENDPOINTS, e.to_string())),
        }
        match weir_datapath::services::ServiceMaps::open(layout) {
            Ok(maps) => {
                for (name, n, cap) in maps.occupancy() {
                    snap.maps.push((name, n as u64, cap));
                }
            }
            Err(e) => snap.map_errors.push((map_names::SERVICES, e.to_string())),
        }
        match NodeMap::open(layout).and_then(|m| m.list()) {
            Ok(l) => snap
                .maps
                .push((map_names::NODES, l.len() as u64, capacity::NODES)),
            Err(e) => snap.map_errors.push((map_names::NODES, e.to_string())),
        }
        match TrafficMap::open(layout).and_then(|m| m.totals()) {
            Ok(t) => {
                snap.maps
                    .push((map_names::TRAFFIC, t.len() as u64, capacity::TRAFFIC));
                snap.traffic = t;
            }
            Err(e) => snap.map_errors.push((map_names::TRAFFIC, e.to_string())),
        }
        match DropMap::open(layout).and_then(|m| m.totals()) {
            Ok(d) => {
                snap.maps
                    .push((map_names::DROPS, d.len() as u64, capacity::DROPS));
                snap.drops = d;
            }
            Err(e) => snap.map_errors.push((map_names::DROPS, e.to_string())),
        }
        snap
    }

    fn labels_of(&self, ifindex: u32) -> EndpointLabels {
        self.labels
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| EndpointLabels {
                interface: crate::hygiene::ifname_of(ifindex).unwrap_or_default(),
                ..EndpointLabels::default()
            })
    }
}

/// Escapes a label value for the Prometheus text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn endpoint_labels(l: &EndpointLabels, ifindex: u32) -> String {
    format!(
        "namespace=\"{}\",pod=\"{}\",interface=\"{}\",ifindex=\"{ifindex}\"",
        escape(&l.namespace),
        escape(&l.pod),
        escape(&l.interface)
    )
}

/// Renders the Prometheus text exposition of `snap` and `stats`.
pub fn render(snap: &Snapshot, stats: &Stats) -> String {
    let mut out = String::new();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    header(
        &mut out,
        "weir_endpoint_packets_total",
        "counter",
        "Packets per endpoint; direction from_pod is what the pod sent, to_pod what it received.",
    );
    for (ifindex, t) in &snap.traffic {
        let l = endpoint_labels(&snap.labels_of(*ifindex), *ifindex);
        let _ = writeln!(
            out,
            "weir_endpoint_packets_total{{{l},direction=\"from_pod\"}} {}",
            t.from_pod_packets
        );
        let _ = writeln!(
            out,
            "weir_endpoint_packets_total{{{l},direction=\"to_pod\"}} {}",
            t.to_pod_packets
        );
    }
    header(
        &mut out,
        "weir_endpoint_bytes_total",
        "counter",
        "Bytes per endpoint and direction.",
    );
    for (ifindex, t) in &snap.traffic {
        let l = endpoint_labels(&snap.labels_of(*ifindex), *ifindex);
        let _ = writeln!(
            out,
            "weir_endpoint_bytes_total{{{l},direction=\"from_pod\"}} {}",
            t.from_pod_bytes
        );
        let _ = writeln!(
            out,
            "weir_endpoint_bytes_total{{{l},direction=\"to_pod\"}} {}",
            t.to_pod_bytes
        );
    }
    header(
        &mut out,
        "weir_drops_total",
        "counter",
        "Packets dropped by the datapath, per endpoint and reason.",
    );
    for ((ifindex, reason), n) in &snap.drops {
        let l = endpoint_labels(&snap.labels_of(*ifindex), *ifindex);
        let _ = writeln!(
            out,
            "weir_drops_total{{{l},reason=\"{}\"}} {n}",
            reason.name()
        );
    }
    header(
        &mut out,
        "weir_map_entries",
        "gauge",
        "Entries in each pinned map.",
    );
    for (name, entries, _) in &snap.maps {
        let _ = writeln!(out, "weir_map_entries{{map=\"{name}\"}} {entries}");
    }
    header(
        &mut out,
        "weir_map_capacity",
        "gauge",
        "Maximum entries of each pinned map.",
    );
    for (name, _, cap) in &snap.maps {
        let _ = writeln!(out, "weir_map_capacity{{map=\"{name}\"}} {cap}");
    }
    header(
        &mut out,
        "weir_map_read_errors",
        "gauge",
        "1 for each map that could not be read for this scrape.",
    );
    for (name, _) in &snap.map_errors {
        let _ = writeln!(out, "weir_map_read_errors{{map=\"{name}\"}} 1");
    }
    let counters: [(&str, &str, u64); 6] = [
        (
            "weir_reconciles_total",
            "Reconcile passes over the NODES map and node routes.",
            load(&stats.reconciles),
        ),
        (
            "weir_reconcile_errors_total",
            "Reconcile passes that failed (they are retried).",
            load(&stats.reconcile_errors),
        ),
        (
            "weir_node_source_errors_total",
            "Errors reading the node source (API watch or manifest directory).",
            load(&stats.source_errors),
        ),
        (
            "weir_stale_endpoints_removed_total",
            "ENDPOINTS entries removed because their interface was gone.",
            load(&stats.stale_endpoints_removed),
        ),
        (
            "weir_stale_links_removed_total",
            "Link pin directories removed because their interface was gone.",
            load(&stats.stale_links_removed),
        ),
        (
            "weir_stale_endpoint_records_removed_total",
            "Endpoint records removed because their interface was gone.",
            load(&stats.stale_records_removed),
        ),
    ];
    for (name, help, value) in counters {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "weir_remote_pod_cidrs",
        "gauge",
        "Remote pod CIDRs in the desired node state.",
    );
    let _ = writeln!(out, "weir_remote_pod_cidrs {}", load(&stats.remote_cidrs));
    for (name, kind, help, value) in [
        (
            "weir_service_frontends",
            "gauge",
            "Service frontends (ClusterIP and NodePort, per port) in the desired state.",
            load(&stats.service_frontends),
        ),
        (
            "weir_service_syncs_total",
            "counter",
            "Service syncs into the maps.",
            load(&stats.service_syncs),
        ),
        (
            "weir_service_sync_errors_total",
            "counter",
            "Service syncs that failed (retried at the next change).",
            load(&stats.service_sync_errors),
        ),
        (
            "weir_service_sync_last_seconds",
            "gauge",
            "Time from the last service event to its map writes being done.",
            0,
        ),
        (
            "weir_udp_flows_purged_total",
            "counter",
            "UDP flows forgotten because their backend went away.",
            load(&stats.udp_flows_purged),
        ),
        (
            "weir_conntrack_expired_total",
            "counter",
            "Conntrack entries removed by the sweeper after their timeout.",
            load(&stats.ct_expired),
        ),
    ] {
        header(&mut out, name, kind, help);
        if name == "weir_service_sync_last_seconds" {
            let secs = load(&stats.last_service_sync_us) as f64 / 1e6;
            let _ = writeln!(out, "{name} {secs}");
        } else {
            let _ = writeln!(out, "{name} {value}");
        }
    }
    header(
        &mut out,
        "weir_ready",
        "gauge",
        "1 when /readyz answers 200.",
    );
    let _ = writeln!(out, "weir_ready {}", u8::from(stats.ready()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters_and_occupancy() {
        let mut snap = Snapshot::default();
        snap.traffic.insert(
            7,
            Traffic {
                from_pod_packets: 3,
                from_pod_bytes: 300,
                to_pod_packets: 4,
                to_pod_bytes: 400,
            },
        );
        snap.drops.insert((7, DropReason::SpoofedIp), 2);
        snap.labels.insert(
            7,
            EndpointLabels {
                namespace: "default".into(),
                pod: "web\"0".into(),
                interface: "wr1".into(),
            },
        );
        snap.maps.push(("ENDPOINTS", 1, 65_536));
        let stats = Stats::default();
        stats.record_reconcile(false);
        stats.stale_endpoints_removed.store(5, Ordering::Relaxed);
        let text = render(&snap, &stats);
        let l = r#"namespace="default",pod="web\"0",interface="wr1",ifindex="7""#;
        for line in [
            format!("weir_endpoint_packets_total{{{l},direction=\"from_pod\"}} 3"),
            format!("weir_endpoint_packets_total{{{l},direction=\"to_pod\"}} 4"),
            format!("weir_endpoint_bytes_total{{{l},direction=\"from_pod\"}} 300"),
            format!("weir_endpoint_bytes_total{{{l},direction=\"to_pod\"}} 400"),
            format!("weir_drops_total{{{l},reason=\"spoofed_ip\"}} 2"),
            "weir_map_entries{map=\"ENDPOINTS\"} 1".to_string(),
            "weir_map_capacity{map=\"ENDPOINTS\"} 65536".to_string(),
            "weir_reconciles_total 1".to_string(),
            "weir_reconcile_errors_total 1".to_string(),
            "weir_stale_endpoints_removed_total 5".to_string(),
            "weir_ready 0".to_string(),
        ] {
            assert!(
                text.lines().any(|x| x == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a declared metric family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} undeclared"
            );
        }
    }

    #[test]
    fn readiness_needs_all_three_conditions() {
        let stats = Stats::default();
        assert!(!stats.ready());
        stats.datapath_loaded.store(true, Ordering::Release);
        stats.node_info_written.store(true, Ordering::Release);
        assert!(!stats.ready());
        stats.nodes_synced.store(true, Ordering::Release);
        assert!(stats.ready());
    }
}
