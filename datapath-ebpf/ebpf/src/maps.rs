//! The object's maps. Each `static` is named after its entry in
//! `weir_common::map_names` (the loader finds maps by these names; a test
//! checks that they agree).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuHashMap},
};
use weir_common::{
    AffinityEntry, AffinityKey, Backend, BackendKey, CtEntry, DropKey, Endpoint, FlowKey, IpKey,
    Meta, RemoteNode, RevNatEntry, Service, ServiceKey, Traffic, capacity,
};

#[map]
pub static ENDPOINTS: HashMap<IpKey, Endpoint> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// `BPF_F_NO_PREALLOC`: LPM tries require it.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
pub static NODES: LpmTrie<[u8; 16], RemoteNode> =
    LpmTrie::with_max_entries(capacity::NODES, BPF_F_NO_PREALLOC);

#[map]
pub static TRAFFIC: PerCpuHashMap<u32, Traffic> =
    PerCpuHashMap::with_max_entries(capacity::TRAFFIC, 0);

#[map]
pub static DROPS: PerCpuHashMap<DropKey, u64> = PerCpuHashMap::with_max_entries(capacity::DROPS, 0);

#[map]
pub static META: Array<Meta> = Array::with_max_entries(capacity::META, 0);

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> =
    HashMap::with_max_entries(capacity::SERVICES, 0);

#[map]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(capacity::BACKENDS, 0);

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

#[map]
pub static REVNAT: LruHashMap<FlowKey, RevNatEntry> =
    LruHashMap::with_max_entries(capacity::REVNAT, 0);

#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(capacity::AFFINITY, 0);
