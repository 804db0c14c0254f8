//! Endpoint hygiene: state left behind by pods whose interface is gone (a
//! netns deleted without CNI DEL, a crash in the middle of DEL) is found and
//! removed, at start and periodically. Must run in the node's network
//! namespace, where the host-side veths live.

use std::{
    collections::BTreeSet,
    ffi::{CStr, CString},
    net::IpAddr,
    path::Path,
    sync::{Arc, atomic::Ordering},
};

use serde::Serialize;
use tracing::{info, instrument, warn};
use weir_datapath::{
    PinLayout, attach,
    endpoint_info::EndpointInfo,
    maps::{DropMap, EndpointMap, TrafficMap},
};

use crate::metrics::Stats;

/// The name of the interface with index `ifindex` in this namespace.
pub fn ifname_of(ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The index of interface `name` in this namespace.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    pub endpoints: Vec<IpAddr>,
    pub links: Vec<String>,
    pub records: Vec<String>,
    pub counters: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum HygieneError {
    #[error(transparent)]
    Datapath(#[from] weir_datapath::Error),
    #[error(transparent)]
    Record(#[from] weir_datapath::endpoint_info::EndpointInfoError),
}

/// Removes endpoint entries, link pins, endpoint records and counters whose
/// interface no longer exists.
#[instrument(skip_all)]
pub fn sweep(
    layout: &PinLayout,
    endpoints_dir: &Path,
    stats: &Arc<Stats>,
) -> Result<SweepReport, HygieneError> {
    let mut report = SweepReport::default();
    let mut endpoints = EndpointMap::open(layout)?;
    let mut traffic = TrafficMap::open(layout)?;
    let mut drops = DropMap::open(layout)?;
    let mut gone_ifindexes = BTreeSet::new();

    for (ip, ep) in endpoints.list()? {
        if ifname_of(ep.ifindex).is_none() {
            info!(%ip, ifindex = ep.ifindex, "removing stale endpoint: its interface is gone");
            endpoints.remove(ip)?;
            report.endpoints.push(ip);
            gone_ifindexes.insert(ep.ifindex);
        }
    }
    for ifname in attach::linked_interfaces(layout)? {
        if ifindex_of(&ifname).is_none() {
            info!(%ifname, "removing stale link pins: the interface is gone");
            attach::detach_interface(layout, &ifname)?;
            report.links.push(ifname);
        }
    }
    let (records, bad) = EndpointInfo::list(endpoints_dir);
    for e in bad {
        warn!(error = %e, "unreadable endpoint record");
    }
    for r in records {
        if ifname_of(r.host_ifindex).as_deref() != Some(r.host_ifname.as_str()) {
            info!(ifname = %r.host_ifname, ifindex = r.host_ifindex,
                  "removing stale endpoint record: the interface is gone");
            EndpointInfo::remove(endpoints_dir, &r.host_ifname)?;
            gone_ifindexes.insert(r.host_ifindex);
            report.records.push(r.host_ifname);
        }
    }
    for ifindex in traffic.totals()?.keys() {
        if ifname_of(*ifindex).is_none() {
            gone_ifindexes.insert(*ifindex);
        }
    }
    for (ifindex, _) in drops.totals()?.keys() {
        if ifname_of(*ifindex).is_none() {
            gone_ifindexes.insert(*ifindex);
        }
    }
    for ifindex in gone_ifindexes {
        traffic.remove(ifindex)?;
        drops.remove_endpoint(ifindex)?;
        report.counters.push(ifindex);
    }

    stats
        .stale_endpoints_removed
        .fetch_add(report.endpoints.len() as u64, Ordering::Relaxed);
    stats
        .stale_links_removed
        .fetch_add(report.links.len() as u64, Ordering::Relaxed);
    stats
        .stale_records_removed
        .fetch_add(report.records.len() as u64, Ordering::Relaxed);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_both_ways_and_nonsense_does_not() {
        assert_eq!(ifname_of(1).as_deref(), Some("lo"));
        assert_eq!(ifindex_of("lo"), Some(1));
        assert_eq!(ifname_of(0), None);
        assert_eq!(ifname_of(u32::MAX - 7), None);
        assert_eq!(ifindex_of("no-such-if-x"), None);
        assert_eq!(ifindex_of("bad\0name"), None);
    }
}
