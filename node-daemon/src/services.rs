//! Services: Kubernetes `Service`s and `EndpointSlice`s turned into the
//! frontends weir programs, and the sync of those frontends into the maps.
//!
//! Rules, as kube-proxy applies them:
//! - every ClusterIP of a Service (`spec.clusterIPs`, one per family) and
//!   every TCP/UDP port makes a ClusterIP frontend; headless and
//!   ExternalName services make none;
//! - NodePort and LoadBalancer services also make a NodePort frontend per
//!   port on each of this node's addresses of the port's family; with
//!   `externalTrafficPolicy: Local` those list only endpoints on this node;
//! - backends come from the EndpointSlices labelled
//!   `kubernetes.io/service-name` with the Service's name, of the frontend's
//!   address family; only endpoints whose `ready` condition is true (or
//!   unset, which means ready) count. A terminating endpoint gets no new
//!   flows; its established flows keep their conntrack entries;
//! - a Service port matches a slice port by name (named target ports are
//!   resolved by the EndpointSlice controller into the slice's port number);
//! - `sessionAffinity: ClientIP` asks for affinity with its timeout
//!   (default 10800 s).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;
use tracing::{info, instrument, warn};
use weir_datapath::{
    PinLayout,
    services::{BackendAddr, Frontend, ServiceMaps, ServiceSpec},
};

use crate::{metrics::Stats, nodes::NodeSet};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default ClientIP affinity timeout.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// What a frontend should be programmed with (the id is the sync's to give).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    /// `namespace/name:port`, for logs and inspection.
    pub service: String,
    pub backends: Vec<BackendAddr>,
    pub affinity_timeout_s: Option<u32>,
}

/// Every frontend this node should have.
pub type DesiredServices = BTreeMap<Frontend, DesiredFrontend>;

fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        _ => None, // SCTP is not load-balanced by weir
    }
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The ready backends of one Service port, by family-agnostic address,
/// sorted and deduplicated (slices may overlap while they are updated).
fn backends_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: &str,
    local_node: Option<&str>,
) -> Vec<BackendAddr> {
    let mut out = BTreeSet::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == proto
        }) else {
            continue;
        };
        let Some(number) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            if let Some(node) = local_node
                && ep.node_name.as_deref() != Some(node)
            {
                continue;
            }
            for addr in &ep.addresses {
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    out.insert(BackendAddr { ip, port: number });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Turns Services and EndpointSlices into the frontends of node `node_name`
/// with addresses `node_ips`.
pub fn desired(
    services: &[Service],
    slices: &[EndpointSlice],
    node_name: &str,
    node_ips: &[IpAddr],
) -> DesiredServices {
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        if let Some(name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service
                .entry((ns, name.clone()))
                .or_default()
                .push(slice);
        }
    }

    let mut out = DesiredServices::new();
    for svc in services {
        let (Some(name), Some(spec)) = (svc.metadata.name.as_ref(), svc.spec.as_ref()) else {
            continue;
        };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
        if kind == "ExternalName" {
            continue;
        }
        let cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok()) // "None" (headless) does not parse
            .collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
        });
        let nodeport = kind == "NodePort" || kind == "LoadBalancer";
        let local_only = spec.external_traffic_policy.as_deref() == Some("Local");
        let slices = by_service
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default();
        for port in spec.ports.iter().flatten() {
            let proto_name = port.protocol.as_deref().unwrap_or("TCP");
            let Some(proto) = proto_number(Some(proto_name)) else {
                continue;
            };
            let Ok(svc_port) = u16::try_from(port.port) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let label = format!(
                "{ns}/{name}:{}",
                if port_name.is_empty() {
                    svc_port.to_string()
                } else {
                    port_name.clone()
                }
            );
            let all = backends_for(&slices, &port_name, proto_name, None);
            for vip in &cluster_ips {
                out.insert(
                    Frontend::cluster_ip(*vip, svc_port, proto),
                    DesiredFrontend {
                        service: label.clone(),
                        backends: all
                            .iter()
                            .filter(|b| same_family(&b.ip, vip))
                            .copied()
                            .collect(),
                        affinity_timeout_s: affinity,
                    },
                );
            }
            if nodeport && let Some(np) = port.node_port.and_then(|p| u16::try_from(p).ok()) {
                let backends = if local_only {
                    backends_for(&slices, &port_name, proto_name, Some(node_name))
                } else {
                    all.clone()
                };
                for node_ip in node_ips {
                    out.insert(
                        Frontend::node_port(*node_ip, np, proto),
                        DesiredFrontend {
                            service: label.clone(),
                            backends: backends
                                .iter()
                                .filter(|b| same_family(&b.ip, node_ip))
                                .copied()
                                .collect(),
                            affinity_timeout_s: affinity,
                        },
                    );
                }
            }
        }
    }
    out
}

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    /// UDP flows forgotten because their backend went away.
    pub purged_flows: usize,
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

/// Brings the maps to `desired`, writing only what differs. Frontends keep
/// the ids they have in the maps (a restart finds them there), so flows and
/// affinities survive; new frontends get the lowest free ids.
pub fn sync(
    maps: &mut ServiceMaps,
    desired: &DesiredServices,
) -> Result<SyncReport, weir_datapath::Error> {
    let current: BTreeMap<Frontend, (u32, Vec<BackendAddr>, Option<u32>)> = maps
        .list()?
        .into_iter()
        .map(|(f, svc, backends)| {
            let affinity = (svc.flags & weir_common::SERVICE_F_AFFINITY != 0)
                .then_some(svc.affinity_timeout_s);
            (f, (svc.id, backends, affinity))
        })
        .collect();
    let mut report = SyncReport::default();

    for (frontend, (_, backends, _)) in &current {
        if !desired.contains_key(frontend) {
            maps.remove(frontend)?;
            report.removed += 1;
            if frontend.proto == 17 {
                for b in backends {
                    report.purged_flows += maps.purge_backend(b, 17)?;
                }
            }
        }
    }

    let mut used: BTreeSet<u32> = current
        .iter()
        .filter(|(f, _)| desired.contains_key(*f))
        .map(|(_, (id, _, _))| *id)
        .collect();
    let mut next_free = 1u32;
    for (frontend, want) in desired {
        let (id, is_new) = match current.get(frontend) {
            Some((id, backends, affinity))
                if *backends == want.backends && *affinity == want.affinity_timeout_s =>
            {
                let _ = id;
                continue; // unchanged
            }
            Some((id, _, _)) => (*id, false),
            None => {
                while used.contains(&next_free) {
                    next_free += 1;
                }
                used.insert(next_free);
                (next_free, true)
            }
        };
        maps.upsert(
            frontend,
            &ServiceSpec {
                id,
                backends: want.backends.clone(),
                affinity_timeout_s: want.affinity_timeout_s,
            },
        )?;
        if is_new {
            report.added += 1;
        } else {
            report.updated += 1;
            if frontend.proto == 17
                && let Some((_, old, _)) = current.get(frontend)
            {
                for gone in old.iter().filter(|b| !want.backends.contains(b)) {
                    report.purged_flows += maps.purge_backend(gone, 17)?;
                }
            }
        }
    }
    Ok(report)
}

/// Problems reading Service and EndpointSlice manifests.
#[derive(Debug, thiserror::Error)]
pub enum ServiceManifestError {
    #[error("{path}: document {index} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{path}: document {index} is not a valid {kind}: {source}")]
    Object {
        path: PathBuf,
        index: usize,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Services and EndpointSlices from manifest files (other kinds ignored).
pub fn from_files(
    files: &[(PathBuf, String)],
) -> Result<(Vec<Service>, Vec<EndpointSlice>), ServiceManifestError> {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (path, text) in files {
        for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let value =
                <serde_json::Value as serde::Deserialize>::deserialize(doc).map_err(|source| {
                    ServiceManifestError::Yaml {
                        path: path.clone(),
                        index,
                        source,
                    }
                })?;
            collect(path, index, value, &mut services, &mut slices)?;
        }
    }
    Ok((services, slices))
}

fn collect(
    path: &Path,
    index: usize,
    value: serde_json::Value,
    services: &mut Vec<Service>,
    slices: &mut Vec<EndpointSlice>,
) -> Result<(), ServiceManifestError> {
    let object = |kind: &'static str| {
        move |source| ServiceManifestError::Object {
            path: path.to_owned(),
            index,
            kind,
            source,
        }
    };
    match value.get("kind").and_then(|k| k.as_str()).unwrap_or("") {
        "Service" => services.push(serde_json::from_value(value).map_err(object("Service"))?),
        "EndpointSlice" => {
            slices.push(serde_json::from_value(value).map_err(object("EndpointSlice"))?)
        }
        "List" | "ServiceList" | "EndpointSliceList" => {
            if let Some(serde_json::Value::Array(items)) = value.get("items").cloned() {
                for item in items {
                    collect(path, index, item, services, slices)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The Services and EndpointSlices a source last saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceObjects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

pub type ServiceSender = watch::Sender<Option<ServiceObjects>>;

/// Reads Services and EndpointSlices from the manifest directory (the same
/// one Node manifests come from) every `period`, publishing when it changed.
/// A directory that does not parse keeps the previous objects.
#[instrument(skip_all, fields(dir = %dir.display()))]
pub async fn watch_dir(dir: PathBuf, period: Duration, tx: ServiceSender, stats: Arc<Stats>) {
    let mut last: Option<Vec<(PathBuf, String)>> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let files = match crate::source::read_dir_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reading the service manifest directory");
                stats.source_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if last.as_ref() == Some(&files) {
            continue;
        }
        match from_files(&files) {
            Ok((services, slices)) => {
                info!(
                    services = services.len(),
                    slices = slices.len(),
                    "service manifests read"
                );
                tx.send_replace(Some(ServiceObjects { services, slices }));
            }
            Err(e) => {
                warn!(error = %e, "service manifests are invalid; keeping the previous ones");
                stats.source_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        last = Some(files);
    }
}

/// Watches Services and EndpointSlices through the API (list, then watch,
/// relisting after a 410 and backing off on errors) and publishes both once
/// each has been listed, then after every change.
#[instrument(skip_all)]
pub async fn watch_kube(client: Client, tx: ServiceSender, stats: Arc<Stats>) {
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (eps_reader, eps_writer) = reflector::store::<EndpointSlice>();
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer);
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(eps_writer);
    let mut services = std::pin::pin!(services);
    let mut slices = std::pin::pin!(slices);
    let (mut svc_synced, mut eps_synced) = (false, false);
    loop {
        let changed = tokio::select! {
            e = services.next() => match e {
                Some(Ok(watcher::Event::InitDone)) => { svc_synced = true; true }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => true,
                Some(Ok(_)) => false,
                Some(Err(e)) => {
                    warn!(error = %e, "watching services (retrying with backoff)");
                    stats.source_errors.fetch_add(1, Ordering::Relaxed);
                    false
                }
                None => return,
            },
            e = slices.next() => match e {
                Some(Ok(watcher::Event::InitDone)) => { eps_synced = true; true }
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => true,
                Some(Ok(_)) => false,
                Some(Err(e)) => {
                    warn!(error = %e, "watching endpointslices (retrying with backoff)");
                    stats.source_errors.fetch_add(1, Ordering::Relaxed);
                    false
                }
                None => return,
            },
        };
        if changed && svc_synced && eps_synced {
            let objects = ServiceObjects {
                services: svc_reader.state().iter().map(|s| (**s).clone()).collect(),
                slices: eps_reader.state().iter().map(|s| (**s).clone()).collect(),
            };
            tx.send_if_modified(|current| {
                if current.as_ref() == Some(&objects) {
                    false
                } else {
                    *current = Some(objects);
                    true
                }
            });
        }
    }
}

/// How often expired conntrack entries are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Programs the service maps from the service source and this node's
/// addresses (from the node set), and sweeps expired flows. Runs until the
/// task is aborted.
#[instrument(skip_all)]
pub async fn run(
    layout: PinLayout,
    node_name: String,
    mut services: watch::Receiver<Option<ServiceObjects>>,
    mut nodes: watch::Receiver<Option<NodeSet>>,
    stats: Arc<Stats>,
) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut services_open, mut nodes_open) = (true, true);
    loop {
        let started = tokio::select! {
            r = services.changed(), if services_open => {
                if r.is_err() { services_open = false; }
                Instant::now()
            }
            r = nodes.changed(), if nodes_open => {
                if r.is_err() { nodes_open = false; }
                Instant::now()
            }
            _ = sweep.tick() => {
                let layout = layout.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    ServiceMaps::open(&layout)?.sweep(
                        weir_datapath::services::monotonic_now_ns(),
                        &weir_datapath::services::CtTimeouts::default(),
                    )
                })
                .await;
                match swept {
                    Ok(Ok(n)) => {
                        stats.ct_expired.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => warn!(error = %e, "sweeping conntrack"),
                    Err(e) => warn!(error = %e, "conntrack sweep task"),
                }
                continue;
            }
        };
        if !services_open && !nodes_open {
            return;
        }
        let Some(objects) = services.borrow_and_update().clone() else {
            continue;
        };
        let node_ips: Vec<IpAddr> = nodes
            .borrow_and_update()
            .as_ref()
            .and_then(|set| set.get(&node_name))
            .map(|n| n.internal_ips.clone())
            .unwrap_or_default();
        let want = desired(&objects.services, &objects.slices, &node_name, &node_ips);
        let frontends = want.len();
        let layout = layout.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut maps = ServiceMaps::open(&layout)?;
            sync(&mut maps, &want)
        })
        .await;
        match result {
            Ok(Ok(report)) => {
                let us = started.elapsed().as_micros() as u64;
                stats.record_service_sync(true, frontends, us, report.purged_flows);
                if report.changed() {
                    info!(?report, frontends, sync_us = us, "services programmed");
                }
            }
            Ok(Err(e)) => {
                stats.record_service_sync(false, frontends, 0, 0);
                warn!(error = %e, "programming services; retrying at the next change");
            }
            Err(e) => warn!(error = %e, "service sync task"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ipFamilies: [IPv4, IPv6]
  ports:
  - {name: http, port: 80, targetPort: web, protocol: TCP, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP}
  sessionAffinity: ClientIP
---
apiVersion: v1
kind: Service
metadata: {name: local, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.11
  externalTrafficPolicy: Local
  ports:
  - {port: 8080, nodePort: 30081}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.invalid}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v4
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.200.0.5]
  conditions: {ready: true}
  nodeName: node-0
- addresses: [10.200.1.5]
  nodeName: node-1
- addresses: [10.200.1.6]
  conditions: {ready: false, terminating: true}
  nodeName: node-1
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-v6
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: ["fd00:200::5"]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-a
  namespace: shop
  labels: {kubernetes.io/service-name: local}
addressType: IPv4
ports:
- {port: 9000}
endpoints:
- {addresses: [10.200.0.7], nodeName: node-0}
- {addresses: [10.200.1.7], nodeName: node-1}
"#;

    fn parsed() -> (Vec<Service>, Vec<EndpointSlice>) {
        from_files(&[(PathBuf::from("m.yaml"), MANIFESTS.to_string())]).unwrap()
    }

    fn be(ip: &str, port: u16) -> BackendAddr {
        BackendAddr {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn services_and_slices_become_frontends_by_family_port_and_readiness() {
        let (services, slices) = parsed();
        assert_eq!((services.len(), slices.len()), (4, 3));
        let node_ips: Vec<IpAddr> = vec!["192.168.100.1".parse().unwrap()];
        let d = desired(&services, &slices, "node-0", &node_ips);

        let web_v4 = &d[&Frontend::cluster_ip("10.96.0.10".parse().unwrap(), 80, 6)];
        assert_eq!(
            web_v4.backends,
            vec![be("10.200.0.5", 8080), be("10.200.1.5", 8080)],
            "ready or unset; not terminating"
        );
        assert_eq!(web_v4.affinity_timeout_s, Some(DEFAULT_AFFINITY_TIMEOUT_S));
        assert_eq!(web_v4.service, "shop/web:http");
        let web_v6 = &d[&Frontend::cluster_ip("fd00:96::10".parse().unwrap(), 80, 6)];
        assert_eq!(
            web_v6.backends,
            vec![be("fd00:200::5", 8080)],
            "grouped by family"
        );
        let dns = &d[&Frontend::cluster_ip("10.96.0.10".parse().unwrap(), 53, 17)];
        assert_eq!(
            dns.backends,
            vec![be("10.200.0.5", 5353), be("10.200.1.5", 5353)],
            "named port resolved by the slice"
        );
        assert!(
            !d.contains_key(&Frontend::cluster_ip(
                "fd00:96::10".parse().unwrap(),
                53,
                17
            )) || d[&Frontend::cluster_ip("fd00:96::10".parse().unwrap(), 53, 17)]
                .backends
                .is_empty()
        );

        let np = &d[&Frontend::node_port("192.168.100.1".parse().unwrap(), 30080, 6)];
        assert_eq!(
            np.backends, web_v4.backends,
            "NodePort with cluster policy: every backend"
        );
        let local = &d[&Frontend::node_port("192.168.100.1".parse().unwrap(), 30081, 6)];
        assert_eq!(
            local.backends,
            vec![be("10.200.0.7", 9000)],
            "externalTrafficPolicy Local: this node's only"
        );
        let local_cluster = &d[&Frontend::cluster_ip("10.96.0.11".parse().unwrap(), 8080, 6)];
        assert_eq!(
            local_cluster.backends.len(),
            2,
            "the ClusterIP still uses every backend"
        );

        assert!(
            d.keys()
                .all(|f| f.ip != "10.96.0.12".parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            d.values()
                .filter(
                    |f| f.service.starts_with("shop/headless") || f.service.starts_with("shop/ext")
                )
                .count(),
            0,
            "headless and ExternalName make no frontend"
        );
    }

    #[test]
    fn a_bad_manifest_is_an_error_naming_the_file() {
        let err = from_files(&[(
            PathBuf::from("bad.yaml"),
            "kind: Service\nspec: {ports: 7}\n".into(),
        )])
        .unwrap_err();
        assert!(
            err.to_string().contains("bad.yaml") && err.to_string().contains("Service"),
            "{err}"
        );
        let err = from_files(&[(PathBuf::from("worse.yaml"), "a: [\n".into())]).unwrap_err();
        assert!(err.to_string().contains("worse.yaml"), "{err}");
    }

    /// Real pinned maps, removed on drop.
    struct Pins(weir_datapath::PinLayout);

    impl Pins {
        fn new() -> Pins {
            weir_datapath::bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).unwrap();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let layout = weir_datapath::PinLayout::new(format!(
                "/sys/fs/bpf/weir-test-svcsync-{}-{nanos}",
                std::process::id()
            ));
            weir_datapath::loader::load(&layout, weir_datapath::object::OBJECT).unwrap();
            Pins(layout)
        }
    }

    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = weir_datapath::loader::unpin_all(&self.0);
        }
    }

    #[test]
    fn sync_writes_only_changes_and_keeps_ids_across_a_restart() {
        let pins = Pins::new();
        let (services, mut slices) = parsed();
        let node_ips: Vec<IpAddr> = vec!["192.168.100.1".parse().unwrap()];
        let want = desired(&services, &slices, "node-0", &node_ips);
        let mut maps = ServiceMaps::open(&pins.0).unwrap();
        let first = sync(&mut maps, &want).unwrap();
        assert_eq!(first.added, want.len());
        assert_eq!(
            sync(&mut maps, &want).unwrap(),
            SyncReport::default(),
            "nothing to do"
        );
        let ids: BTreeMap<Frontend, u32> = maps
            .list()
            .unwrap()
            .into_iter()
            .map(|(f, s, _)| (f, s.id))
            .collect();
        assert_eq!(
            ids.values().collect::<BTreeSet<_>>().len(),
            ids.len(),
            "ids are unique"
        );

        // A restart opens the same pins: nothing changes, ids stay.
        let mut reopened = ServiceMaps::open(&pins.0).unwrap();
        assert_eq!(sync(&mut reopened, &want).unwrap(), SyncReport::default());

        // An endpoint leaves: only the frontends of its ports change.
        slices[0].endpoints.remove(1);
        let want2 = desired(&services, &slices, "node-0", &node_ips);
        let r = sync(&mut reopened, &want2).unwrap();
        assert_eq!((r.added, r.removed), (0, 0));
        assert_eq!(
            r.updated, 3,
            "web:http ClusterIP, web:dns ClusterIP and the web NodePort"
        );
        let after: BTreeMap<Frontend, u32> = reopened
            .list()
            .unwrap()
            .into_iter()
            .map(|(f, s, _)| (f, s.id))
            .collect();
        assert_eq!(after, ids, "updates keep ids");

        // The service goes: its frontends go.
        let r = sync(&mut reopened, &DesiredServices::new()).unwrap();
        assert_eq!(r.removed, want.len());
        assert!(reopened.list().unwrap().is_empty());
    }
}
