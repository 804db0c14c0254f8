//! `weir-node run`: load the datapath, then run the node source, the
//! reconciler, endpoint hygiene and the HTTP endpoints until `shutdown`
//! completes. Shutdown leaves the datapath (pins, maps, links, routes) in
//! place: pods keep forwarding while the daemon is away.

use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tracing::{error, info, instrument, warn};
use weir_common::ABI_VERSION;
use weir_datapath::{PinLayout, attach, bpffs, loader, node_info::NodeInfo, object};

use crate::{
    http::{self, HttpState},
    hygiene, masquerade,
    metrics::Stats,
    nodes::{NodeSet, desired_remotes},
    reconcile::Reconciler,
    routes::Routes,
    services, source,
};

/// Where the node set comes from.
#[derive(Clone, Debug)]
pub enum NodeSource {
    /// A directory of Kubernetes-format YAML manifests.
    Dir { dir: PathBuf, poll: Duration },
    /// The API server (a kubeconfig file, or in-cluster/`KUBECONFIG`).
    Kube { kubeconfig: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub layout: PinLayout,
    pub node_name: String,
    pub node_json: PathBuf,
    pub endpoints_dir: PathBuf,
    /// `None`: the uplink's MTU, else 1500.
    pub mtu: Option<u32>,
    pub listen: SocketAddr,
    pub source: NodeSource,
    pub resync: Duration,
    pub hygiene_interval: Duration,
    /// Install (and keep) the masquerade rule.
    pub masquerade: bool,
}

/// The node routes traffic between its uplink and the pods' host veths
/// (traffic from other nodes, NodePort, the FIB-forwarding fast path all need
/// it), as every CNI requires.
fn enable_forwarding() -> Result<()> {
    for key in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        match std::fs::read_to_string(key) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => {
                std::fs::write(key, "1").with_context(|| format!("enabling {key}"))?;
                info!(sysctl = key, "forwarding enabled");
            }
            // No IPv6 on this kernel: nothing to enable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {key}")),
        }
    }
    Ok(())
}

pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let stats = Arc::new(Stats::default());
    if let Some(mountpoint) = cfg.layout.root().parent() {
        bpffs::ensure_mounted(mountpoint)
            .with_context(|| format!("mounting bpffs at {}", mountpoint.display()))?;
    }
    let report = loader::load(&cfg.layout, object::OBJECT).context("loading the datapath")?;
    info!(
        reused_maps = ?report.reused_maps,
        created_maps = ?report.created_maps,
        programs = ?report.programs.iter().map(|p| (p.name, p.id)).collect::<Vec<_>>(),
        relinked = report.relinked_interfaces.len(),
        "datapath loaded"
    );
    let digest = object::digest();
    match report.previous_digest {
        Some(previous) if previous != digest => info!(
            relinked = ?report.relinked_interfaces,
            "datapath upgraded: pod links moved to the new programs"
        ),
        Some(_) => info!("pins reused: the same object was already loaded"),
        None => info!("datapath created"),
    }
    stats.datapath_loaded.store(true, Ordering::Release);
    enable_forwarding()?;

    let routes = Routes::connect().context("netlink")?;
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => match routes.uplink_mtu().await {
            Ok(Some(m)) => m,
            Ok(None) => 1500,
            Err(e) => {
                warn!(error = %e, "reading the uplink MTU; using 1500");
                1500
            }
        },
    };

    run_hygiene(&cfg, &stats).await;
    if cfg.masquerade {
        ensure_masquerade(&stats, true).await;
    }

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    {
        let state = HttpState {
            layout: cfg.layout.clone(),
            endpoints_dir: cfg.endpoints_dir.clone(),
            stats: stats.clone(),
        };
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = http::serve(listener, state, stopped).await {
                error!(error = %e, "HTTP server failed");
            }
        });
    }

    let (tx, rx) = watch::channel::<Option<NodeSet>>(None);
    let (svc_tx, svc_rx) = watch::channel::<Option<services::ServiceObjects>>(None);
    match &cfg.source {
        NodeSource::Dir { dir, poll } => {
            info!(dir = %dir.display(), "node and service source: manifest directory");
            tasks.spawn(source::watch_dir(dir.clone(), *poll, tx, stats.clone()));
            tasks.spawn(services::watch_dir(
                dir.clone(),
                *poll,
                svc_tx,
                stats.clone(),
            ));
        }
        NodeSource::Kube { kubeconfig } => {
            let client = source::kube_client(kubeconfig.as_deref()).await?;
            info!("node and service source: Kubernetes API");
            tasks.spawn(source::watch_kube(client.clone(), tx, stats.clone()));
            tasks.spawn(services::watch_kube(client, svc_tx, stats.clone()));
        }
    }
    tasks.spawn(services::run(
        cfg.layout.clone(),
        cfg.node_name.clone(),
        svc_rx,
        rx.clone(),
        stats.clone(),
    ));
    {
        let cfg = cfg.clone();
        let stats = stats.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(cfg.hygiene_interval);
            tick.tick().await; // the first sweep already ran
            loop {
                tick.tick().await;
                run_hygiene(&cfg, &stats).await;
            }
        });
    }

    let reconciler = Reconciler::new(cfg.layout.clone(), routes, stats.clone());
    let result = reconcile_loop(&cfg, mtu, rx, &reconciler, &stats, shutdown).await;

    info!("shutting down; the datapath stays in place");
    let _ = stop_tx.send(true);
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    result
}

async fn run_hygiene(cfg: &RunConfig, stats: &Arc<Stats>) {
    let (layout, dir, stats) = (cfg.layout.clone(), cfg.endpoints_dir.clone(), stats.clone());
    match tokio::task::spawn_blocking(move || hygiene::sweep(&layout, &dir, &stats)).await {
        Ok(Ok(report)) if report != hygiene::SweepReport::default() => {
            info!(?report, "endpoint hygiene removed stale state");
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "endpoint hygiene"),
        Err(e) => warn!(error = %e, "endpoint hygiene task"),
    }
}

/// Installs the masquerade rule (always when `force`, else only when weir's
/// table is missing). Failures are logged and counted, and retried at the
/// next resync.
#[instrument(skip(stats))]
async fn ensure_masquerade(stats: &Arc<Stats>, force: bool) {
    let result = tokio::task::spawn_blocking(move || {
        if force || !masquerade::present()? {
            masquerade::install().map(|()| true)
        } else {
            Ok(false)
        }
    })
    .await;
    match result {
        Ok(Ok(true)) => info!(table = masquerade::TABLE, "masquerade rule installed"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "installing the masquerade rule");
            stats.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => warn!(error = %e, "masquerade task"),
    }
}

async fn reconcile_loop(
    cfg: &RunConfig,
    mtu: u32,
    mut rx: watch::Receiver<Option<NodeSet>>,
    reconciler: &Reconciler,
    stats: &Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(cfg.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    let mut source_alive = true;
    let mut last_problems = Vec::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            changed = rx.changed(), if source_alive => {
                if changed.is_err() {
                    warn!("the node source stopped; keeping the last node set");
                    source_alive = false;
                }
            }
            _ = tick.tick() => {
                if cfg.masquerade {
                    ensure_masquerade(stats, false).await;
                }
            }
        }
        let Some(set) = rx.borrow_and_update().clone() else {
            continue;
        };
        apply(cfg, mtu, &set, reconciler, stats, &mut last_problems).await;
    }
}

#[instrument(skip_all, fields(nodes = set.len()))]
async fn apply(
    cfg: &RunConfig,
    mtu: u32,
    set: &NodeSet,
    reconciler: &Reconciler,
    stats: &Arc<Stats>,
    last_problems: &mut Vec<String>,
) {
    let (desired, problems) = desired_remotes(set, &cfg.node_name);
    if problems != *last_problems {
        for p in &problems {
            warn!(problem = %p, "node set");
        }
        *last_problems = problems;
    }
    let hosts: BTreeMap<IpNetwork, IpAddr> = set
        .values()
        .filter(|n| n.name != cfg.node_name)
        .flat_map(|n| n.internal_ips.iter().copied())
        .filter_map(|ip| {
            IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 })
                .ok()
                .map(|net| (net, ip))
        })
        .collect();
    if let Err(e) = reconciler.reconcile(&desired, &hosts).await {
        warn!(error = %e, "reconcile failed; retrying at the next resync");
    }

    // node.json, and readiness, need this node's own object.
    let Some(me) = set.get(&cfg.node_name) else {
        warn!(node = %cfg.node_name, "this node is not in the node set yet");
        return;
    };
    let info = NodeInfo {
        abi_version: ABI_VERSION,
        node_name: cfg.node_name.clone(),
        pod_cidrs: me.pod_cidrs.clone(),
        node_ips: me.internal_ips.clone(),
        mtu,
        pin_root: cfg.layout.root().to_owned(),
    };
    if NodeInfo::read(&cfg.node_json).ok().as_ref() != Some(&info) {
        if let Err(e) = info.write(&cfg.node_json) {
            error!(error = %e, "writing node info");
            return;
        }
        info!(path = %cfg.node_json.display(), pod_cidrs = ?info.pod_cidrs, "node info written");
    }
    stats.node_info_written.store(true, Ordering::Release);
    stats.nodes_synced.store(true, Ordering::Release);
    attach_nodeport(cfg, &me.internal_ips);
}

/// Attaches `from_netdev` (NodePort) to every interface that carries one of
/// this node's addresses, once: an existing link (from an earlier run) was
/// already moved to the current program by the loader.
fn attach_nodeport(cfg: &RunConfig, node_ips: &[IpAddr]) {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        warn!("listing interfaces for NodePort");
        return;
    };
    let mut devices: Vec<String> = addrs
        .filter(|a| {
            a.address
                .as_ref()
                .and_then(|s| {
                    s.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .is_some_and(|ip| node_ips.contains(&ip))
        })
        .map(|a| a.interface_name)
        .collect();
    devices.sort();
    devices.dedup();
    for dev in devices {
        if cfg
            .layout
            .link(&dev, weir_common::program_names::FROM_NETDEV)
            .exists()
            || cfg
                .layout
                .interface_links(&dev)
                .join("clsact")
                .join(weir_common::program_names::FROM_NETDEV)
                .exists()
        {
            continue;
        }
        match attach::attach_netdev(&cfg.layout, &dev, attach::AttachMode::detect()) {
            Ok(()) => info!(device = %dev, "NodePort program attached"),
            Err(e) => warn!(device = %dev, error = %e, "attaching the NodePort program"),
        }
    }
}
