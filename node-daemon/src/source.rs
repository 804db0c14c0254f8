//! Node sources. Each publishes the complete node set into a watch channel
//! whenever it changes; `None` means "not synced yet". A source that fails
//! keeps the last good set published and retries.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;
use tracing::{debug, info, instrument, warn};

use crate::{
    metrics::Stats,
    nodes::{NodeSet, NodeSpec, node_set_from_files},
};

pub type NodeSetSender = watch::Sender<Option<NodeSet>>;

/// Reads every manifest in `dir` (`*.yaml`, `*.yml`, `*.json`; hidden files
/// skipped), sorted by name.
pub fn read_dir_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let wanted = [".yaml", ".yml", ".json"].iter().any(|s| name.ends_with(s));
        if name.starts_with('.') || !wanted || !path.is_file() {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((path, text)),
            // Removed between listing and reading: it is simply gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    files.sort();
    Ok(files)
}

/// Watches a directory of Node manifests by reading it every `period` and
/// publishing the node set when the content changed. A directory that does
/// not parse keeps the previous set (a half-written file must not remove
/// nodes); the error is logged and counted.
#[instrument(skip_all, fields(dir = %dir.display()))]
pub async fn watch_dir(dir: PathBuf, period: Duration, tx: NodeSetSender, stats: Arc<Stats>) {
    let mut last: Option<Vec<(PathBuf, String)>> = None;
    let mut failing = false;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let files = match read_dir_files(&dir) {
            Ok(f) => f,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "reading the node manifest directory");
                }
                failing = true;
                stats.source_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if last.as_ref() == Some(&files) {
            continue;
        }
        match node_set_from_files(&files) {
            Ok(set) => {
                info!(nodes = set.len(), "node manifests changed");
                failing = false;
                tx.send_replace(Some(set));
            }
            Err(e) => {
                warn!(error = %e, "node manifests are invalid; keeping the previous node set");
                stats.source_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        last = Some(files);
    }
}

/// Builds a client from a kubeconfig file, or the in-cluster / `KUBECONFIG`
/// configuration when none is given.
pub async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no in-cluster configuration or kubeconfig")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Watches Node objects (list, then watch; relists when the watch expires,
/// backs off on errors) and publishes the node set after the initial list
/// and after every change.
#[instrument(skip_all)]
pub async fn watch_kube(client: Client, tx: NodeSetSender, stats: Arc<Stats>) {
    let api: Api<Node> = Api::all(client);
    let (reader, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let mut events = std::pin::pin!(events);
    let mut synced = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => debug!("listing nodes"),
            Ok(watcher::Event::InitApply(_)) => {}
            Ok(watcher::Event::InitDone) => {
                synced = true;
                publish(&reader, &tx, &stats);
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                if synced {
                    publish(&reader, &tx, &stats);
                }
            }
            Err(e) => {
                warn!(error = %e, "watching nodes (retrying with backoff)");
                stats.source_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn publish(reader: &reflector::Store<Node>, tx: &NodeSetSender, stats: &Stats) {
    let mut set = NodeSet::new();
    for node in reader.state() {
        match NodeSpec::from_node(&node) {
            Ok(spec) => {
                set.insert(spec.name.clone(), spec);
            }
            Err(e) => {
                warn!(error = %e, "ignoring node");
                stats.source_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tx.send_if_modified(|current| {
        if current.as_ref() == Some(&set) {
            false
        } else {
            info!(nodes = set.len(), "node set changed");
            *current = Some(set);
            true
        }
    });
}
