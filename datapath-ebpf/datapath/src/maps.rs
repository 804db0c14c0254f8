//! One typed wrapper per pinned map, opened from its pin, with domain verbs.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, lpm_trie::Key};
use weir_common::{DropKey, DropReason, Endpoint, IpKey, Meta, RemoteNode, Traffic, map_names};

use crate::{Error, PinLayout, Result};

pub(crate) fn open(layout: &PinLayout, name: &'static str) -> Result<Map> {
    let path = layout.map(name);
    if !path.exists() {
        return Err(Error::NotLoaded {
            root: layout.root().to_owned(),
        });
    }
    let err = |e| Error::OpenMap {
        name,
        path: path.clone(),
        source: Box::new(e),
    };
    let data = MapData::from_pin(&path).map_err(err)?;
    Map::from_map_data(data).map_err(err)
}

pub(crate) fn map_err(name: &'static str) -> impl Fn(MapError) -> Error {
    move |e| Error::Map {
        name,
        source: Box::new(e),
    }
}

pub(crate) fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// `ENDPOINTS`: the pods on this node, by address.
pub struct EndpointMap {
    map: HashMap<MapData, IpKey, Endpoint>,
}

impl EndpointMap {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let map = open(layout, map_names::ENDPOINTS)?;
        Ok(Self {
            map: HashMap::try_from(map).map_err(map_err(map_names::ENDPOINTS))?,
        })
    }

    pub fn upsert(&mut self, ip: IpAddr, endpoint: Endpoint) -> Result<()> {
        self.map
            .insert(IpKey::from(ip), endpoint, 0)
            .map_err(map_err(map_names::ENDPOINTS))
    }

    /// Removes the entry for `ip`; succeeds when there is none.
    pub fn remove(&mut self, ip: IpAddr) -> Result<()> {
        match self.map.remove(&IpKey::from(ip)) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::ENDPOINTS)(e)),
        }
    }

    pub fn get(&self, ip: IpAddr) -> Result<Option<Endpoint>> {
        match self.map.get(&IpKey::from(ip), 0) {
            Ok(e) => Ok(Some(e)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(map_names::ENDPOINTS)(e)),
        }
    }

    /// Every entry, sorted by address.
    pub fn list(&self) -> Result<Vec<(IpAddr, Endpoint)>> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(map_err(map_names::ENDPOINTS))?;
            out.push((IpAddr::from(k), v));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }
}

/// `NODES`: remote pod CIDRs and the node that owns each.
pub struct NodeMap {
    map: LpmTrie<MapData, [u8; 16], RemoteNode>,
}

fn lpm_key(net: IpAddr, prefix_len: u8) -> Key<[u8; 16]> {
    let bits = match net {
        IpAddr::V4(_) => weir_common::v4_prefix_len(prefix_len),
        IpAddr::V6(_) => u32::from(prefix_len),
    };
    Key::new(bits, IpKey::from(net).addr)
}

impl NodeMap {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let map = open(layout, map_names::NODES)?;
        Ok(Self {
            map: LpmTrie::try_from(map).map_err(map_err(map_names::NODES))?,
        })
    }

    pub fn upsert(&mut self, net: IpAddr, prefix_len: u8, node_ip: IpAddr) -> Result<()> {
        let value = RemoteNode {
            node_ip: IpKey::from(node_ip).addr,
            flags: 0,
        };
        self.map
            .insert(&lpm_key(net, prefix_len), value, 0)
            .map_err(map_err(map_names::NODES))
    }

    pub fn remove(&mut self, net: IpAddr, prefix_len: u8) -> Result<()> {
        match self.map.remove(&lpm_key(net, prefix_len)) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::NODES)(e)),
        }
    }

    /// Every entry as (network, prefix length, node IP).
    pub fn list(&self) -> Result<Vec<(IpAddr, u8, IpAddr)>> {
        let mut out = Vec::new();
        for item in self.map.iter() {
            let (k, v) = item.map_err(map_err(map_names::NODES))?;
            let net = IpAddr::from(IpKey { addr: k.data() });
            let len = match net {
                IpAddr::V4(_) => k.prefix_len().saturating_sub(96),
                IpAddr::V6(_) => k.prefix_len(),
            } as u8;
            out.push((net, len, IpAddr::from(IpKey { addr: v.node_ip })));
        }
        out.sort();
        Ok(out)
    }
}

/// `TRAFFIC`: per-endpoint packet and byte counts, summed over CPUs.
pub struct TrafficMap {
    map: PerCpuHashMap<MapData, u32, Traffic>,
}

impl TrafficMap {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let map = open(layout, map_names::TRAFFIC)?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map).map_err(map_err(map_names::TRAFFIC))?,
        })
    }

    /// Totals by host-side ifindex.
    pub fn totals(&self) -> Result<BTreeMap<u32, Traffic>> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (ifindex, per_cpu) = item.map_err(map_err(map_names::TRAFFIC))?;
            let mut sum = Traffic::default();
            for t in per_cpu.iter() {
                sum.from_pod_packets += t.from_pod_packets;
                sum.from_pod_bytes += t.from_pod_bytes;
                sum.to_pod_packets += t.to_pod_packets;
                sum.to_pod_bytes += t.to_pod_bytes;
            }
            out.insert(ifindex, sum);
        }
        Ok(out)
    }

    /// Forgets the counters of an endpoint (its interface is gone).
    pub fn remove(&mut self, ifindex: u32) -> Result<()> {
        match self.map.remove(&ifindex) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::TRAFFIC)(e)),
        }
    }
}

/// `DROPS`: drops per endpoint and reason, summed over CPUs.
pub struct DropMap {
    map: PerCpuHashMap<MapData, DropKey, u64>,
}

impl DropMap {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let map = open(layout, map_names::DROPS)?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map).map_err(map_err(map_names::DROPS))?,
        })
    }

    /// Totals by (host-side ifindex, reason). Reasons this build does not know
    /// are skipped.
    pub fn totals(&self) -> Result<BTreeMap<(u32, DropReason), u64>> {
        let mut out = BTreeMap::new();
        for item in self.map.iter() {
            let (key, per_cpu) = item.map_err(map_err(map_names::DROPS))?;
            if let Some(reason) = DropReason::from_u32(key.reason) {
                out.insert((key.ifindex, reason), per_cpu.iter().sum());
            }
        }
        Ok(out)
    }

    /// Forgets every drop counter of an endpoint.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<()> {
        for reason in DropReason::ALL {
            let key = DropKey {
                ifindex,
                reason: reason as u32,
            };
            match self.map.remove(&key) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(map_names::DROPS)(e)),
            }
        }
        Ok(())
    }
}

/// `META`: the ABI version and object digest of the pins.
pub struct MetaMap {
    map: Array<MapData, Meta>,
}

impl MetaMap {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        let map = open(layout, map_names::META)?;
        Ok(Self {
            map: Array::try_from(map).map_err(map_err(map_names::META))?,
        })
    }

    pub fn get(&self) -> Result<Meta> {
        self.map.get(&0, 0).map_err(map_err(map_names::META))
    }
}
