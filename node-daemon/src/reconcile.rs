//! The node reconciler: makes the `NODES` map and weir's node routes match
//! the desired remote pod CIDRs, writing only the differences. It starts from
//! whatever the map and the routing table hold (a restart flushes nothing).

use std::{collections::BTreeMap, fmt::Debug, net::IpAddr, sync::Arc};

use ipnetwork::IpNetwork;
use tracing::{info, instrument, warn};
use weir_datapath::{PinLayout, maps::NodeMap};

use crate::{
    metrics::Stats,
    routes::{RouteError, Routes},
};

/// What has to change to turn `current` into `desired`.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    /// Keys that are missing or hold another value.
    pub upsert: Vec<(K, V)>,
    /// Keys that are no longer desired.
    pub remove: Vec<K>,
}

impl<K, V> Changes<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> Changes<K, V> {
    let upsert = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .cloned()
        .collect();
    Changes { upsert, remove }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("NODES map: {0}")]
    Map(#[from] weir_datapath::Error),
    #[error("{0}")]
    Route(#[from] RouteError),
}

/// How many writes one pass made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub map_upserts: usize,
    pub map_removals: usize,
    pub route_upserts: usize,
    pub route_removals: usize,
}

pub struct Reconciler {
    layout: PinLayout,
    routes: Routes,
    stats: Arc<Stats>,
}

impl Reconciler {
    pub fn new(layout: PinLayout, routes: Routes, stats: Arc<Stats>) -> Reconciler {
        Reconciler {
            layout,
            routes,
            stats,
        }
    }

    /// One pass over the map and the routes. Both are attempted even when
    /// the other fails; the first error is returned (and every error counted).
    /// `hosts`: the other nodes' own addresses (as host prefixes), entered in
    /// the NODES map only, so that traffic from pods to another node is
    /// forwarded, never masqueraded; they need no route.
    #[instrument(skip_all, fields(remotes = desired.len()))]
    pub async fn reconcile(
        &self,
        desired: &BTreeMap<IpNetwork, IpAddr>,
        hosts: &BTreeMap<IpNetwork, IpAddr>,
    ) -> Result<Summary, ReconcileError> {
        let mut summary = Summary::default();
        let mut first_error = None;
        let mut in_map = hosts.clone();
        in_map.extend(desired.iter().map(|(k, v)| (*k, *v)));
        match self.reconcile_map(&in_map) {
            Ok((up, rm)) => (summary.map_upserts, summary.map_removals) = (up, rm),
            Err(e) => {
                warn!(error = %e, "reconciling the NODES map");
                first_error.get_or_insert(e);
            }
        }
        match self.reconcile_routes(desired).await {
            Ok((up, rm)) => (summary.route_upserts, summary.route_removals) = (up, rm),
            Err(e) => {
                warn!(error = %e, "reconciling node routes");
                first_error.get_or_insert(e);
            }
        }
        self.stats.record_reconcile(first_error.is_none());
        self.stats.set_remote_cidrs(desired.len());
        if summary != Summary::default() {
            info!(?summary, "node state reconciled");
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }

    #[instrument(skip_all)]
    fn reconcile_map(
        &self,
        desired: &BTreeMap<IpNetwork, IpAddr>,
    ) -> Result<(usize, usize), ReconcileError> {
        let mut map = NodeMap::open(&self.layout)?;
        let current: BTreeMap<IpNetwork, IpAddr> = map
            .list()?
            .into_iter()
            .filter_map(|(net, len, ip)| IpNetwork::new(net, len).ok().map(|n| (n, ip)))
            .collect();
        let changes = diff(&current, desired);
        if changes.is_empty() {
            return Ok((0, 0));
        }
        for net in &changes.remove {
            info!(%net, "removing NODES entry");
            map.remove(net.network(), net.prefix())?;
        }
        for (net, ip) in &changes.upsert {
            info!(%net, node_ip = %ip, "writing NODES entry");
            map.upsert(net.network(), net.prefix(), *ip)?;
        }
        Ok((changes.upsert.len(), changes.remove.len()))
    }

    #[instrument(skip_all)]
    async fn reconcile_routes(
        &self,
        desired: &BTreeMap<IpNetwork, IpAddr>,
    ) -> Result<(usize, usize), ReconcileError> {
        let found = self.routes.list().await?;
        let current: BTreeMap<IpNetwork, Option<IpAddr>> =
            found.iter().map(|(n, r)| (*n, r.via)).collect();
        let wanted: BTreeMap<IpNetwork, Option<IpAddr>> =
            desired.iter().map(|(n, ip)| (*n, Some(*ip))).collect();
        let changes = diff(&current, &wanted);
        let mut first_error: Option<ReconcileError> = None;
        for net in &changes.remove {
            info!(%net, "removing node route");
            if let Err(e) = self.routes.remove(*net, &found[net]).await {
                warn!(error = %e, "removing node route");
                first_error.get_or_insert(e.into());
            }
        }
        for (net, via) in &changes.upsert {
            let Some(via) = via else { continue };
            info!(%net, %via, "adding node route");
            if let Err(e) = self.routes.replace(*net, *via).await {
                warn!(error = %e, "adding node route");
                first_error.get_or_insert(e.into());
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((changes.upsert.len(), changes.remove.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn diff_writes_only_changes() {
        let current = m(&[("a", 1), ("b", 2), ("c", 3)]);
        let desired = m(&[("a", 1), ("b", 9), ("d", 4)]);
        let changes = diff(&current, &desired);
        assert_eq!(
            changes.upsert,
            vec![("b".to_string(), 9), ("d".to_string(), 4)]
        );
        assert_eq!(changes.remove, vec!["c".to_string()]);
        assert!(!changes.is_empty());
        assert!(diff(&desired, &desired).is_empty());
        let empty = m(&[]);
        assert_eq!(diff(&current, &empty).remove.len(), 3);
        assert_eq!(diff(&empty, &current).upsert.len(), 3);
    }
}
