//! Typed access to the service maps (`SERVICES`, `BACKENDS`, `CONNTRACK`,
//! `REVNAT`, `AFFINITY`) with the verbs the control plane needs: program one
//! service (touching only its own entries, in an order that never exposes a
//! half-written service to a packet), remove one, purge a backend's flows,
//! and sweep expired conntrack.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData};
use weir_common::{
    AffinityEntry, AffinityKey, Backend, BackendKey, CT_F_CLOSING, CtEntry, FlowKey, IpKey,
    RevNatEntry, Service, ServiceKey, map_names,
};

use crate::{
    PinLayout, Result,
    maps::{is_not_found, map_err},
};

/// A hash map (plain or LRU: the typed wrapper is the same) from its pin.
fn open<K: aya::Pod, V: aya::Pod>(
    layout: &PinLayout,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>> {
    let map = match crate::maps::open(layout, name)? {
        Map::LruHashMap(d) => Map::HashMap(d),
        other => other,
    };
    HashMap::try_from(map).map_err(map_err(name))
}

/// Which traffic a frontend applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// A ClusterIP: traffic from pods.
    #[default]
    ClusterIp,
    /// A NodePort on one of the node's addresses: traffic from outside,
    /// arriving on the uplink.
    NodePort,
}

/// A frontend: (address, port, protocol) in a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scope: Scope,
}

impl Frontend {
    pub fn cluster_ip(ip: IpAddr, port: u16, proto: u8) -> Frontend {
        Frontend {
            ip,
            port,
            proto,
            scope: Scope::ClusterIp,
        }
    }

    pub fn node_port(node_ip: IpAddr, port: u16, proto: u8) -> Frontend {
        Frontend {
            ip: node_ip,
            port,
            proto,
            scope: Scope::NodePort,
        }
    }

    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: IpKey::from(self.ip).addr,
            port_be: self.port.to_be(),
            proto: self.proto,
            scope: match self.scope {
                Scope::ClusterIp => weir_common::SCOPE_CLUSTER_IP,
                Scope::NodePort => weir_common::SCOPE_NODEPORT,
            },
        }
    }

    pub fn from_key(key: &ServiceKey) -> Frontend {
        Frontend {
            ip: IpAddr::from(IpKey { addr: key.addr }),
            port: u16::from_be(key.port_be),
            proto: key.proto,
            scope: if key.scope == weir_common::SCOPE_NODEPORT {
                Scope::NodePort
            } else {
                Scope::ClusterIp
            },
        }
    }
}

/// A backend address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl BackendAddr {
    pub fn to_map(self) -> Backend {
        Backend {
            addr: IpKey::from(self.ip).addr,
            port_be: self.port.to_be(),
            _pad: [0; 2],
        }
    }

    pub fn from_map(b: &Backend) -> BackendAddr {
        BackendAddr {
            ip: IpAddr::from(IpKey { addr: b.addr }),
            port: u16::from_be(b.port_be),
        }
    }
}

/// What a frontend is programmed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Non-zero, unique per frontend.
    pub id: u32,
    /// Ready backends; an empty list makes the frontend reject connections.
    pub backends: Vec<BackendAddr>,
    /// ClientIP affinity timeout, when the service asks for affinity.
    pub affinity_timeout_s: Option<u32>,
}

/// The service maps of one pin layout.
pub struct ServiceMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: HashMap<MapData, BackendKey, Backend>,
    conntrack: HashMap<MapData, FlowKey, CtEntry>,
    revnat: HashMap<MapData, FlowKey, RevNatEntry>,
    affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
}

impl ServiceMaps {
    pub fn open(layout: &PinLayout) -> Result<Self> {
        Ok(Self {
            services: open(layout, map_names::SERVICES)?,
            backends: open(layout, map_names::BACKENDS)?,
            conntrack: open(layout, map_names::CONNTRACK)?,
            revnat: open(layout, map_names::REVNAT)?,
            affinity: open(layout, map_names::AFFINITY)?,
        })
    }

    /// The programmed service of a frontend.
    pub fn get(&self, frontend: &Frontend) -> Result<Option<Service>> {
        match self.services.get(&frontend.key(), 0) {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_err(map_names::SERVICES)(e)),
        }
    }

    /// Programs a frontend with `spec`, writing only what changed. Growing:
    /// new slots are written before the count covers them. Shrinking: the
    /// count drops before the surplus slots go. A packet therefore never
    /// picks an empty slot.
    pub fn upsert(&mut self, frontend: &Frontend, spec: &ServiceSpec) -> Result<()> {
        let old = self.get(frontend)?;
        let old_count = match old {
            Some(s) if s.id == spec.id => u32::from(s.backend_count),
            _ => 0,
        };
        let count = u32::try_from(spec.backends.len())
            .ok()
            .filter(|c| *c <= u32::from(u16::MAX))
            .unwrap_or(u32::from(u16::MAX));
        for (slot, b) in spec.backends.iter().take(count as usize).enumerate() {
            let key = BackendKey {
                service_id: spec.id,
                slot: slot as u32,
            };
            let value = b.to_map();
            let current = if (slot as u32) < old_count {
                self.backends.get(&key, 0).ok()
            } else {
                None
            };
            if current != Some(value) {
                self.backends
                    .insert(key, value, 0)
                    .map_err(map_err(map_names::BACKENDS))?;
            }
        }
        let (flags, timeout) = match spec.affinity_timeout_s {
            Some(t) => (weir_common::SERVICE_F_AFFINITY, t),
            None => (0, 0),
        };
        let svc = Service {
            id: spec.id,
            backend_count: count as u16,
            flags,
            affinity_timeout_s: timeout,
        };
        if old != Some(svc) {
            self.services
                .insert(frontend.key(), svc, 0)
                .map_err(map_err(map_names::SERVICES))?;
        }
        for slot in count..old_count {
            self.remove_backend_slot(spec.id, slot)?;
        }
        if let Some(o) = old
            && o.id != spec.id
        {
            for slot in 0..u32::from(o.backend_count) {
                self.remove_backend_slot(o.id, slot)?;
            }
        }
        Ok(())
    }

    fn remove_backend_slot(&mut self, service_id: u32, slot: u32) -> Result<()> {
        match self.backends.remove(&BackendKey { service_id, slot }) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::BACKENDS)(e)),
        }
    }

    /// Removes a frontend and its backends. Existing flows keep their
    /// conntrack entries until they expire.
    pub fn remove(&mut self, frontend: &Frontend) -> Result<()> {
        let Some(old) = self.get(frontend)? else {
            return Ok(());
        };
        match self.services.remove(&frontend.key()) {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_err(map_names::SERVICES)(e)),
        }
        for slot in 0..u32::from(old.backend_count) {
            self.remove_backend_slot(old.id, slot)?;
        }
        Ok(())
    }

    /// Every programmed frontend with its backends.
    pub fn list(&self) -> Result<Vec<(Frontend, Service, Vec<BackendAddr>)>> {
        let mut out = Vec::new();
        for item in self.services.iter() {
            let (key, svc) = item.map_err(map_err(map_names::SERVICES))?;
            let mut backends = Vec::new();
            for slot in 0..u32::from(svc.backend_count) {
                if let Ok(b) = self.backends.get(
                    &BackendKey {
                        service_id: svc.id,
                        slot,
                    },
                    0,
                ) {
                    backends.push(BackendAddr::from_map(&b));
                }
            }
            out.push((Frontend::from_key(&key), svc, backends));
        }
        out.sort_by_key(|(f, _, _)| *f);
        Ok(out)
    }

    /// Entries in each service map, by map name (keys counted, values not
    /// read: cheap enough for every metrics scrape).
    pub fn occupancy(&self) -> [(&'static str, usize, u32); 5] {
        use weir_common::capacity;
        [
            (
                map_names::SERVICES,
                self.services.keys().count(),
                capacity::SERVICES,
            ),
            (
                map_names::BACKENDS,
                self.backends.keys().count(),
                capacity::BACKENDS,
            ),
            (
                map_names::CONNTRACK,
                self.conntrack.keys().count(),
                capacity::CONNTRACK,
            ),
            (
                map_names::REVNAT,
                self.revnat.keys().count(),
                capacity::REVNAT,
            ),
            (
                map_names::AFFINITY,
                self.affinity.keys().count(),
                capacity::AFFINITY,
            ),
        ]
    }

    /// Conntrack entries (client flow to the frontend → backend).
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, CtEntry)>> {
        self.conntrack
            .iter()
            .map(|i| i.map_err(map_err(map_names::CONNTRACK)))
            .collect()
    }

    /// Reverse-NAT entries (backend reply flow → frontend).
    pub fn revnat(&self) -> Result<Vec<(FlowKey, RevNatEntry)>> {
        self.revnat
            .iter()
            .map(|i| i.map_err(map_err(map_names::REVNAT)))
            .collect()
    }

    /// Forgets the flows (and affinities) that were sent to `backend` with
    /// `proto`: new packets of those flows pick a live backend. Used for UDP
    /// when a backend goes away. Returns how many flows were purged.
    pub fn purge_backend(&mut self, backend: &BackendAddr, proto: u8) -> Result<usize> {
        let target = backend.to_map();
        let doomed: Vec<(FlowKey, CtEntry)> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, v)| k.proto == proto && v.backend == target)
            .collect();
        for (key, ct) in &doomed {
            self.remove_ct(key)?;
            self.remove_revnat(&reply_of(key, ct))?;
        }
        let affinities: Vec<AffinityKey> = self
            .affinity
            .iter()
            .filter_map(|i| i.ok())
            .filter(|(_, v)| v.backend == target)
            .map(|(k, _)| k)
            .collect();
        for k in affinities {
            match self.affinity.remove(&k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(map_err(map_names::AFFINITY)(e)),
            }
        }
        Ok(doomed.len())
    }

    /// Removes conntrack and reverse-NAT entries idle longer than their
    /// timeout. Returns how many flows expired.
    pub fn sweep(&mut self, now_ns: u64, timeouts: &CtTimeouts) -> Result<usize> {
        let expired: Vec<(FlowKey, CtEntry)> = self
            .conntrack()?
            .into_iter()
            .filter(|(k, v)| {
                now_ns.saturating_sub(v.last_seen_ns) > timeouts.for_entry(k.proto, v.flags)
            })
            .collect();
        for (key, ct) in &expired {
            self.remove_ct(key)?;
            self.remove_revnat(&reply_of(key, ct))?;
        }
        // Reverse entries whose forward entry is gone (evicted by the LRU).
        let idle = timeouts.tcp_established_ns.max(timeouts.udp_ns);
        let stale: Vec<FlowKey> = self
            .revnat()?
            .into_iter()
            .filter(|(_, v)| now_ns.saturating_sub(v.last_seen_ns) > idle)
            .map(|(k, _)| k)
            .collect();
        for key in &stale {
            self.remove_revnat(key)?;
        }
        Ok(expired.len())
    }

    fn remove_ct(&mut self, key: &FlowKey) -> Result<()> {
        match self.conntrack.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::CONNTRACK)(e)),
        }
    }

    fn remove_revnat(&mut self, key: &FlowKey) -> Result<()> {
        match self.revnat.remove(key) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err(map_names::REVNAT)(e)),
        }
    }
}

/// The reply flow of a tracked client flow: backend → client, or, for a
/// NodePort flow SNATed to the node, backend → node address and SNAT port.
pub fn reply_of(client_flow: &FlowKey, ct: &CtEntry) -> FlowKey {
    let (dst, dport_be) = if ct.snat_port_be != 0 {
        (client_flow.dst, ct.snat_port_be)
    } else {
        (client_flow.src, client_flow.sport_be)
    };
    FlowKey {
        src: ct.backend.addr,
        dst,
        sport_be: ct.backend.port_be,
        dport_be,
        proto: client_flow.proto,
        _pad: [0; 3],
    }
}

/// How long an idle flow lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    pub tcp_established_ns: u64,
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
}

impl Default for CtTimeouts {
    /// kube-proxy/conntrack-like defaults: 6 h established TCP, 10 s after a
    /// FIN or RST, 120 s UDP.
    fn default() -> Self {
        Self {
            tcp_established_ns: 6 * 3600 * 1_000_000_000,
            tcp_closing_ns: 10 * 1_000_000_000,
            udp_ns: 120 * 1_000_000_000,
        }
    }
}

impl CtTimeouts {
    pub fn for_entry(&self, proto: u8, flags: u16) -> u64 {
        match proto {
            6 if flags & CT_F_CLOSING != 0 => self.tcp_closing_ns,
            6 => self.tcp_established_ns,
            _ => self.udp_ns,
        }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
    match ts {
        Ok(ts) => (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}
