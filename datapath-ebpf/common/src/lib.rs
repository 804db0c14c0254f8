//! Map keys and values shared by weir's eBPF programs and user space.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and a
//! compile-time size check: the kernel object and the user-space wrappers read
//! the same bytes. Addresses are stored as 16 bytes; an IPv4 address is stored
//! IPv4-mapped (`::ffff:a.b.c.d`), so one map serves both families. Byte order
//! of every multi-byte network field is network order, and its name says so.
//!
//! Changing a layout here changes the datapath ABI: bump [`ABI_VERSION`].
#![no_std]

use core::mem::size_of;

/// Version of the map layout in this file. Stored with the pins so that a
/// daemon or CNI binary built against another layout refuses to use them.
pub const ABI_VERSION: u32 = 1;

/// Names of the maps, as the kernel object declares them (the name of each
/// `static` in the eBPF crate). The loader opens and pins maps by these names;
/// a test checks that the object has each of them with the sizes below.
pub mod map_names {
    pub const ENDPOINTS: &str = "ENDPOINTS";
    pub const NODES: &str = "NODES";
    pub const TRAFFIC: &str = "TRAFFIC";
    pub const DROPS: &str = "DROPS";
    pub const META: &str = "META";
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const REVNAT: &str = "REVNAT";
    pub const AFFINITY: &str = "AFFINITY";

    /// Every map of the object, in pin order.
    pub const ALL: [&str; 10] = [
        ENDPOINTS, NODES, TRAFFIC, DROPS, META, SERVICES, BACKENDS, CONNTRACK, REVNAT, AFFINITY,
    ];
}

/// Names of the programs in the object.
pub mod program_names {
    /// TC ingress of a pod's host-side veth: packets the pod sends.
    pub const FROM_POD: &str = "from_pod";
    /// TC egress of a pod's host-side veth: packets delivered to the pod
    /// through the host stack.
    pub const TO_POD: &str = "to_pod";

    /// TC ingress of the node's uplink: NodePort traffic from outside the
    /// cluster and the replies of its SNATed flows.
    pub const FROM_NETDEV: &str = "from_netdev";

    pub const ALL: [&str; 3] = [FROM_POD, TO_POD, FROM_NETDEV];
    /// The programs attached to a pod's host-side veth.
    pub const POD: [&str; 2] = [FROM_POD, TO_POD];
}

/// Packet mark bits: `from_pod` sets [`MARK_MASQUERADE`] (within
/// [`MARK_MASK`]) on traffic that leaves the cluster, and weir-node's single
/// nftables rule masquerades marked packets to the node address. The rule
/// never grows with pods, nodes or services.
pub const MARK_MASK: u32 = 0x00ff_0000;
pub const MARK_MASQUERADE: u32 = 0x0057_0000;

/// Capacities of the maps.
pub mod capacity {
    pub const ENDPOINTS: u32 = 65_536;
    pub const NODES: u32 = 16_384;
    pub const TRAFFIC: u32 = 65_536;
    pub const DROPS: u32 = 65_536;
    pub const META: u32 = 1;
    /// (VIP, port, protocol) entries: 20,000 services with a few ports each.
    pub const SERVICES: u32 = 65_536;
    /// Backends over all services: 20,000 services x 8 backends, with room.
    pub const BACKENDS: u32 = 262_144;
    pub const CONNTRACK: u32 = 262_144;
    pub const REVNAT: u32 = 262_144;
    pub const AFFINITY: u32 = 65_536;
}

/// An address as a map key: 16 bytes, IPv4 stored IPv4-mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<IpKey>() == 16);

impl IpKey {
    /// The key of an IPv4 address given in network byte order (as it sits in
    /// the packet).
    #[inline(always)]
    pub const fn from_v4_octets(o: [u8; 4]) -> Self {
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
            ],
        }
    }

    #[inline(always)]
    pub const fn from_v6_octets(addr: [u8; 16]) -> Self {
        Self { addr }
    }

    /// The IPv4 address, when this key holds one.
    #[inline(always)]
    pub const fn v4_octets(&self) -> Option<[u8; 4]> {
        let a = &self.addr;
        if a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && a[3] == 0
            && a[4] == 0
            && a[5] == 0
            && a[6] == 0
            && a[7] == 0
            && a[8] == 0
            && a[9] == 0
            && a[10] == 0xff
            && a[11] == 0xff
        {
            Some([a[12], a[13], a[14], a[15]])
        } else {
            None
        }
    }
}

/// Value of `ENDPOINTS` (key: the pod's [`IpKey`]): a pod on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the pod's host-side veth, in the node's namespace. Traffic
    /// to the pod is redirected to its peer; traffic from the pod arrives on
    /// it (anti-spoofing compares against it).
    pub ifindex: u32,
    /// `ENDPOINT_F_*` bits.
    pub flags: u32,
    /// The pod interface's MAC (destination MAC of frames delivered to it).
    pub mac: [u8; 6],
    /// The host-side veth's MAC, which is the pod's gateway neighbour (source
    /// MAC of frames delivered to it).
    pub host_mac: [u8; 6],
}
const _: () = assert!(size_of::<Endpoint>() == 20);

/// Endpoint flag: the entry is ready to receive traffic.
pub const ENDPOINT_F_READY: u32 = 1 << 0;

/// `NODES` is an LPM trie keyed by `Key<[u8; 16]>` (aya's trie key: a
/// `u32` prefix length, then the data): prefix length in bits of the 16-byte
/// form, so an IPv4 /24 is 96 + 24.
pub const NODES_KEY_SIZE: usize = 4 + 16;

/// The LPM prefix length of an IPv4 prefix of `len` bits in the 16-byte form.
pub const fn v4_prefix_len(len: u8) -> u32 {
    96 + len as u32
}

/// Value of `NODES`: the node that owns a remote pod CIDR.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteNode {
    /// The node's underlay address (IPv4-mapped for IPv4).
    pub node_ip: [u8; 16],
    /// `NODE_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<RemoteNode>() == 20);

/// Per-endpoint traffic, per CPU (key: host-side ifindex). "from pod" is what
/// the pod sent; "to pod" is what was delivered to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub from_pod_packets: u64,
    pub from_pod_bytes: u64,
    pub to_pod_packets: u64,
    pub to_pod_bytes: u64,
}
const _: () = assert!(size_of::<Traffic>() == 32);

/// Key of `DROPS` (value: a per-CPU `u64` count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    /// Host-side ifindex of the endpoint the packet came from or went to.
    pub ifindex: u32,
    /// A [`DropReason`] as `u32`.
    pub reason: u32,
}
const _: () = assert!(size_of::<DropKey>() == 8);

/// Why a program dropped a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The packet was too short for the headers it claims.
    Malformed = 1,
    /// The source IP is not one of the sending pod's addresses.
    SpoofedIp = 2,
    /// The source MAC is not the sending pod's MAC.
    SpoofedMac = 3,
    /// The program could not rewrite the packet.
    RewriteFailed = 4,
    /// The redirect helper refused the packet.
    RedirectFailed = 5,
    /// A service has no ready backend and the connection could not be
    /// rejected actively (the reject itself is not a drop).
    NoBackend = 6,
    /// A service slot pointed at no backend (a racing update).
    BackendMissing = 7,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::SpoofedIp,
        DropReason::SpoofedMac,
        DropReason::RewriteFailed,
        DropReason::RedirectFailed,
        DropReason::NoBackend,
        DropReason::BackendMissing,
    ];

    /// The snake_case name used in metrics and inspection output.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::NoBackend => "no_backend",
            DropReason::BackendMissing => "backend_missing",
        }
    }

    pub const fn from_u32(v: u32) -> Option<DropReason> {
        match v {
            1 => Some(DropReason::Malformed),
            2 => Some(DropReason::SpoofedIp),
            3 => Some(DropReason::SpoofedMac),
            4 => Some(DropReason::RewriteFailed),
            5 => Some(DropReason::RedirectFailed),
            6 => Some(DropReason::NoBackend),
            7 => Some(DropReason::BackendMissing),
            _ => None,
        }
    }
}

/// Key of `SERVICES`: a service frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The virtual IP (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// The service port, network byte order.
    pub port_be: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// `SCOPE_*`: which traffic the frontend applies to.
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// Frontend scope: a ClusterIP, matched for traffic from pods.
pub const SCOPE_CLUSTER_IP: u8 = 0;
/// Frontend scope: a NodePort on one of the node's addresses, matched for
/// traffic arriving from outside on the uplink.
pub const SCOPE_NODEPORT: u8 = 1;

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Identifies the service's backends (`BackendKey::service_id`) and its
    /// flows. Assigned by weir-node; never 0.
    pub id: u32,
    /// Ready backends, in slots `0..backend_count`. 0 means the service
    /// rejects new connections.
    pub backend_count: u16,
    /// `SERVICE_F_*` bits.
    pub flags: u16,
    /// ClientIP affinity timeout in seconds (with `SERVICE_F_AFFINITY`).
    pub affinity_timeout_s: u32,
}
const _: () = assert!(size_of::<Service>() == 12);

/// The service keeps a client on one backend (`sessionAffinity: ClientIP`).
pub const SERVICE_F_AFFINITY: u16 = 1 << 0;

/// Key of `BACKENDS`: the backend in a slot of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service_id: u32,
    pub slot: u32,
}
const _: () = assert!(size_of::<BackendKey>() == 8);

/// Value of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Backend>() == 20);

/// A flow's 5-tuple as it appears on the wire, addresses 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Value of `CONNTRACK` (key: the client's flow to the VIP): where the flow
/// was sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub backend: Backend,
    pub service_id: u32,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// For NodePort flows to a backend on another node: the source port the
    /// flow was SNATed to (network order); 0 otherwise.
    pub snat_port_be: u16,
    /// `bpf_ktime_get_ns()` of the last packet.
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 40);

/// A FIN or RST was seen: the entry expires after the short close timeout.
pub const CT_F_CLOSING: u16 = 1 << 0;

/// Value of `REVNAT` (key: the backend's reply flow, backend → client): the
/// frontend the client talked to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatEntry {
    /// Restored as the reply's source: the VIP, or the node address of a
    /// NodePort.
    pub vip: [u8; 16],
    /// With `REVNAT_F_RESTORE_DST`: restored as the reply's destination (the
    /// NodePort client whose source was SNATed to the node).
    pub orig_dst: [u8; 16],
    pub vport_be: u16,
    pub orig_dport_be: u16,
    /// `REVNAT_F_*` bits.
    pub flags: u32,
    pub service_id: u32,
    pub _pad: u32,
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<RevNatEntry>() == 56);

/// The flow was SNATed too: restore the destination as well.
pub const REVNAT_F_RESTORE_DST: u32 = 1 << 0;

/// Key of `AFFINITY`: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: [u8; 16],
    pub service_id: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 20);

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    pub backend: Backend,
    pub _pad: u32,
    pub last_seen_ns: u64,
}
const _: () = assert!(size_of::<AffinityEntry>() == 32);

/// The single value of `META`: which layout the pinned maps have. Written by
/// weir-node when it creates the pins; read by everyone who opens them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`ABI_VERSION`] of the creator; 0 means not yet initialised.
    pub abi_version: u32,
    pub _pad: u32,
    /// First 16 bytes of the SHA-256 of the loaded object, to detect upgrades.
    pub object_digest: [u8; 16],
}
const _: () = assert!(size_of::<Meta>() == 24);

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding
    // (the size assertions above hold the fields' sum), so every bit pattern
    // the kernel hands back is a valid value.
    unsafe impl aya::Pod for IpKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for RemoteNode {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for RevNatEntry {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}

    impl From<core::net::IpAddr> for IpKey {
        fn from(ip: core::net::IpAddr) -> Self {
            match ip {
                core::net::IpAddr::V4(v4) => IpKey::from_v4_octets(v4.octets()),
                core::net::IpAddr::V6(v6) => IpKey::from_v6_octets(v6.octets()),
            }
        }
    }

    impl From<IpKey> for core::net::IpAddr {
        fn from(k: IpKey) -> Self {
            match k.v4_octets() {
                Some(o) => core::net::IpAddr::V4(core::net::Ipv4Addr::from(o)),
                None => core::net::IpAddr::V6(core::net::Ipv6Addr::from(k.addr)),
            }
        }
    }

    impl core::fmt::Display for IpKey {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            core::net::IpAddr::from(*self).fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_mapped_and_round_trip() {
        let k = IpKey::from_v4_octets([10, 1, 2, 3]);
        assert_eq!(&k.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(k.v4_octets(), Some([10, 1, 2, 3]));
        let v6 = IpKey::from_v6_octets([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(v6.v4_octets(), None);
    }

    #[test]
    fn drop_reasons_round_trip_through_u32() {
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_u32(r as u32), Some(r));
        }
        assert_eq!(DropReason::from_u32(0), None);
        assert_eq!(DropReason::from_u32(999), None);
    }
}
