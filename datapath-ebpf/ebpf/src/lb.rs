//! Services: frontend match, backend choice (conntrack first, then affinity
//! or random), DNAT with checksum fixes, reverse NAT of replies, and the
//! active reject of connections to services without a ready backend.

use core::mem::size_of;

use aya_ebpf::{
    helpers::generated::{
        bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail,
    },
    programs::TcContext,
};
use weir_common::{
    AffinityEntry, AffinityKey, Backend, BackendKey, CT_F_CLOSING, CtEntry, DropReason, FlowKey,
    IpKey, REVNAT_F_RESTORE_DST, RevNatEntry, SCOPE_CLUSTER_IP, SERVICE_F_AFFINITY, Service,
    ServiceKey,
};

use crate::{
    Verdict,
    maps::{AFFINITY, BACKENDS, CONNTRACK, REVNAT, SERVICES},
    parse::{
        ETH_HLEN, ETH_P_IP, EthHdr, IPPROTO_TCP, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF,
        Ipv4Hdr, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ihl_bytes,
    },
};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;
const BPF_ANY: u64 = 0;
const TC_ACT_REDIRECT: i64 = 7;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What the load balancer decided.
pub enum Lb {
    /// Carry on delivering the (possibly rewritten) packet.
    Continue,
    /// The packet's fate is decided.
    Done(Verdict),
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn mapped(addr: [u8; 4]) -> [u8; 16] {
    IpKey::from_v4_octets(addr).addr
}

#[inline(always)]
pub fn v4_of(addr: &[u8; 16]) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

/// The packet's flow key as it is on the wire.
#[inline(always)]
pub fn flow(ip: &Ipv4Hdr, l4: &L4) -> FlowKey {
    FlowKey {
        src: mapped(ip.saddr),
        dst: mapped(ip.daddr),
        sport_be: l4.sport_be,
        dport_be: l4.dport_be,
        proto: l4.proto,
        _pad: [0; 3],
    }
}

/// Whether a reply of a NATed flow was restored.
pub enum RevNat {
    /// Not a reply of a NATed flow.
    NotNat,
    /// Restored: the packet now carries the frontend (and, for SNATed
    /// NodePort flows, the client) again.
    Restored,
    /// The rewrite failed: drop.
    Failed,
}

/// What a frontend lookup decided for a flow.
pub enum Pick {
    Backend(CtEntry),
    /// The service has no ready backend: reject the connection.
    NoBackend,
    /// A slot pointed at no backend (a racing update).
    Missing,
}

/// Packets a pod sends: replies of NATed flows get their frontend restored;
/// packets to a ClusterIP get a backend. `Lb::Continue` carries on with the
/// (possibly rewritten) packet; `nat_reply` tells whether it is a restored
/// reply, which must not be masqueraded.
#[inline(always)]
pub fn from_pod(
    ctx: &TcContext,
    ip: &mut Ipv4Hdr,
    l4: &mut L4,
    ingress_ifindex: u32,
    nat_reply: &mut bool,
) -> Lb {
    match rev_nat(ctx, ip, l4) {
        RevNat::Restored => {
            *nat_reply = true;
            return Lb::Continue;
        }
        RevNat::Failed => return Lb::Done(Verdict::Drop(DropReason::RewriteFailed)),
        RevNat::NotNat => {}
    }
    let key = ServiceKey {
        addr: mapped(ip.daddr),
        port_be: l4.dport_be,
        proto: l4.proto,
        scope: SCOPE_CLUSTER_IP,
    };
    // SAFETY: the value is copied out at once.
    let Some(svc) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Lb::Continue;
    };
    let now = now_ns();
    let fkey = flow(ip, l4);
    let ct = match pick(ip, l4, &svc, &fkey, now) {
        Pick::Backend(ct) => ct,
        Pick::NoBackend => return Lb::Done(reject(ctx, ip, l4, ingress_ifindex)),
        Pick::Missing => return Lb::Done(Verdict::Drop(DropReason::BackendMissing)),
    };
    remember_reply(
        &fkey,
        &ct.backend,
        fkey.dst,
        fkey.dport_be,
        None,
        svc.id,
        now,
    );
    if dnat(ctx, ip, l4, &ct.backend).is_err() {
        return Lb::Done(Verdict::Drop(DropReason::RewriteFailed));
    }
    Lb::Continue
}

/// The flow's backend: its conntrack entry when it has one for this
/// service, else a new choice (recorded). Refreshes the entry's clock and
/// closing state.
#[inline(always)]
pub fn pick(ip: &Ipv4Hdr, l4: &L4, svc: &Service, fkey: &FlowKey, now: u64) -> Pick {
    let closing = l4.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if let Some(ct) = CONNTRACK.get_ptr_mut(fkey) {
        // SAFETY: the pointer is valid until the program returns; a racing
        // writer can at worst make last_seen a little stale.
        unsafe {
            if (*ct).service_id == svc.id {
                (*ct).last_seen_ns = now;
                if closing {
                    (*ct).flags |= CT_F_CLOSING;
                } else if l4.tcp_flags & TCP_SYN != 0 {
                    // A new connection reusing the tuple.
                    (*ct).flags &= !CT_F_CLOSING;
                }
                return Pick::Backend(*ct);
            }
        }
    }
    if svc.backend_count == 0 {
        return Pick::NoBackend;
    }
    let Some(backend) = choose(
        ip,
        svc.id,
        svc.backend_count,
        svc.flags,
        svc.affinity_timeout_s,
        now,
    ) else {
        return Pick::Missing;
    };
    let ct = CtEntry {
        backend,
        service_id: svc.id,
        flags: if closing { CT_F_CLOSING } else { 0 },
        snat_port_be: 0,
        last_seen_ns: now,
    };
    let _ = CONNTRACK.insert(fkey, &ct, BPF_ANY);
    Pick::Backend(ct)
}

/// Records how to restore a reply of `client_flow` sent to `backend`: the
/// reply's source becomes `front:front_port` again and, when the client was
/// SNATed to `snat` = (node address, port), its destination the client.
#[inline(always)]
pub fn remember_reply(
    client_flow: &FlowKey,
    backend: &Backend,
    front: [u8; 16],
    front_port_be: u16,
    snat: Option<([u8; 16], u16)>,
    service_id: u32,
    now: u64,
) {
    let (reply_dst, reply_dport, flags) = match snat {
        Some((addr, port)) => (addr, port, REVNAT_F_RESTORE_DST),
        None => (client_flow.src, client_flow.sport_be, 0),
    };
    let reply = FlowKey {
        src: backend.addr,
        dst: reply_dst,
        sport_be: backend.port_be,
        dport_be: reply_dport,
        proto: client_flow.proto,
        _pad: [0; 3],
    };
    let rev = RevNatEntry {
        vip: front,
        orig_dst: client_flow.src,
        vport_be: front_port_be,
        orig_dport_be: client_flow.sport_be,
        flags,
        service_id,
        _pad: 0,
        last_seen_ns: now,
    };
    let _ = REVNAT.insert(&reply, &rev, BPF_ANY);
}

/// Rewrites the destination to the backend.
#[inline(always)]
pub fn dnat(ctx: &TcContext, ip: &mut Ipv4Hdr, l4: &mut L4, backend: &Backend) -> Result<(), i64> {
    let new_addr = v4_of(&backend.addr);
    rewrite(
        ctx,
        l4,
        IPV4_DADDR_OFF,
        l4.off + 2,
        ip.daddr,
        new_addr,
        l4.dport_be,
        backend.port_be,
    )?;
    ip.daddr = new_addr;
    l4.dport_be = backend.port_be;
    Ok(())
}

/// Rewrites the source to `addr:port_be`.
#[inline(always)]
pub fn snat(
    ctx: &TcContext,
    ip: &mut Ipv4Hdr,
    l4: &mut L4,
    addr: [u8; 4],
    port_be: u16,
) -> Result<(), i64> {
    rewrite(
        ctx,
        l4,
        IPV4_SADDR_OFF,
        l4.off,
        ip.saddr,
        addr,
        l4.sport_be,
        port_be,
    )?;
    ip.saddr = addr;
    l4.sport_be = port_be;
    Ok(())
}

/// Restores the frontend as the source of a reply of a NATed flow, and the
/// client as its destination when the flow was SNATed.
#[inline(always)]
pub fn rev_nat(ctx: &TcContext, ip: &mut Ipv4Hdr, l4: &mut L4) -> RevNat {
    let key = flow(ip, l4);
    let Some(entry) = REVNAT.get_ptr_mut(&key) else {
        return RevNat::NotNat;
    };
    // SAFETY: valid until the program returns.
    let e = unsafe {
        (*entry).last_seen_ns = now_ns();
        *entry
    };
    if e.flags & REVNAT_F_RESTORE_DST != 0 {
        let client = v4_of(&e.orig_dst);
        if rewrite(
            ctx,
            l4,
            IPV4_DADDR_OFF,
            l4.off + 2,
            ip.daddr,
            client,
            l4.dport_be,
            e.orig_dport_be,
        )
        .is_err()
        {
            return RevNat::Failed;
        }
        ip.daddr = client;
        l4.dport_be = e.orig_dport_be;
    }
    if snat(ctx, ip, l4, v4_of(&e.vip), e.vport_be).is_err() {
        return RevNat::Failed;
    }
    RevNat::Restored
}

/// A free source port for SNATing `client_flow` to `node:port` towards
/// `backend`: the client's own port when no other flow holds it, else a
/// random one from the ephemeral range. `None` when every try collided.
#[inline(always)]
pub fn snat_port(client_flow: &FlowKey, backend: &Backend, node: [u8; 16]) -> Option<u16> {
    let mut port_be = client_flow.sport_be;
    for _ in 0..4 {
        let reply = FlowKey {
            src: backend.addr,
            dst: node,
            sport_be: backend.port_be,
            dport_be: port_be,
            proto: client_flow.proto,
            _pad: [0; 3],
        };
        // SAFETY: copied out at once.
        match unsafe { REVNAT.get(&reply) }.copied() {
            None => return Some(port_be),
            Some(e) if e.orig_dst == client_flow.src && e.orig_dport_be == client_flow.sport_be => {
                return Some(port_be);
            }
            Some(_) => {
                // SAFETY: a helper without arguments.
                let r = unsafe { bpf_get_prandom_u32() } % 28_000;
                port_be = (32_768u16 + r as u16).to_be();
            }
        }
    }
    None
}

/// Picks a backend: the client's affinity entry when the service has
/// ClientIP affinity and the entry is fresh, else a random slot.
#[inline(always)]
fn choose(
    ip: &Ipv4Hdr,
    service_id: u32,
    count: u16,
    flags: u16,
    timeout_s: u32,
    now: u64,
) -> Option<Backend> {
    let affinity = flags & SERVICE_F_AFFINITY != 0;
    let akey = AffinityKey {
        client: mapped(ip.saddr),
        service_id,
    };
    if affinity {
        // SAFETY: copied out at once.
        if let Some(a) = unsafe { AFFINITY.get(&akey) }.copied()
            && now.saturating_sub(a.last_seen_ns) < u64::from(timeout_s) * NANOS_PER_SEC
        {
            // Only while that backend is still one of the service's.
            if backend_still_listed(service_id, count, &a.backend) {
                refresh_affinity(&akey, a.backend, now);
                return Some(a.backend);
            }
        }
    }
    // SAFETY: a helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % u32::from(count);
    // SAFETY: copied out at once.
    let backend = unsafe { BACKENDS.get(&BackendKey { service_id, slot }) }.copied()?;
    if affinity {
        refresh_affinity(&akey, backend, now);
    }
    Some(backend)
}

#[inline(always)]
fn refresh_affinity(key: &AffinityKey, backend: Backend, now: u64) {
    let entry = AffinityEntry {
        backend,
        _pad: 0,
        last_seen_ns: now,
    };
    let _ = AFFINITY.insert(key, &entry, BPF_ANY);
}

/// Whether `backend` is in one of the service's first `count` slots. Bounded
/// to 64 slots so the verifier sees an end; an affinity past that is simply
/// re-chosen.
#[inline(always)]
fn backend_still_listed(service_id: u32, count: u16, backend: &Backend) -> bool {
    let n = if count > 64 { 64 } else { u32::from(count) };
    for slot in 0..64u32 {
        if slot >= n {
            break;
        }
        // SAFETY: copied out at once.
        if let Some(b) = unsafe { BACKENDS.get(&BackendKey { service_id, slot }) }
            && b.addr == backend.addr
            && b.port_be == backend.port_be
        {
            return true;
        }
    }
    false
}

/// Rewrites one address and its port, fixing the IPv4 and transport checksums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    l4: &L4,
    addr_off: usize,
    port_off: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    old_port: u16,
    new_port: u16,
) -> Result<(), i64> {
    let old_a = u64::from(u32::from_ne_bytes(old_addr));
    let new_a = u64::from(u32::from_ne_bytes(new_addr));
    let csum_off = l4.csum_off();
    // A UDP checksum of 0 means "none" and must stay 0.
    let l4_flags = if l4.proto == IPPROTO_TCP {
        0
    } else {
        BPF_F_MARK_MANGLED_0
    };
    ctx.l4_csum_replace(csum_off, old_a, new_a, BPF_F_PSEUDO_HDR | l4_flags | 4)?;
    ctx.l4_csum_replace(
        csum_off,
        u64::from(old_port),
        u64::from(new_port),
        l4_flags | 2,
    )?;
    ctx.l3_csum_replace(IPV4_CSUM_OFF, old_a, new_a, 4)?;
    ctx.store(addr_off, &new_addr, 0)?;
    ctx.store(port_off, &new_port, 0)?;
    Ok(())
}

/// Folds a 32-bit one's complement sum into the 16-bit checksum.
#[inline(always)]
fn csum_fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff) + (sum >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// The one's complement sum of `words` (a multiple of 4 bytes).
#[inline(always)]
fn csum_of<T>(value: &mut T) -> u64 {
    // SAFETY: value is a live stack object of size_of::<T>() bytes.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            value as *mut T as *mut u32,
            size_of::<T>() as u32,
            0,
        )
    };
    sum as u64 & 0xffff_ffff
}

#[repr(C)]
struct TcpHdr {
    sport_be: u16,
    dport_be: u16,
    seq_be: u32,
    ack_be: u32,
    doff_flags_be: u16,
    window_be: u16,
    check: u16,
    urg_be: u16,
}

#[repr(C)]
struct TcpPseudo {
    saddr: [u8; 4],
    daddr: [u8; 4],
    zero: u8,
    proto: u8,
    len_be: u16,
    tcp: TcpHdr,
}

/// Rejects a connection to a service without a ready backend, as kube-proxy
/// does: TCP gets a RST; other protocols an ICMP port unreachable would be
/// due, which the packet's shape may not allow, so they are dropped and
/// counted. The reply is sent back into the client pod.
#[inline(always)]
pub fn reject(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4, ingress_ifindex: u32) -> Verdict {
    if l4.proto != IPPROTO_TCP || l4.tcp_flags & TCP_RST != 0 || ihl_bytes(ip) != 20 {
        return Verdict::Drop(DropReason::NoBackend);
    }
    match tcp_reset(ctx, ip, l4) {
        Ok(()) => {}
        Err(_) => return Verdict::Drop(DropReason::RewriteFailed),
    }
    // SAFETY: a plain helper call with scalar arguments.
    let ret = unsafe { bpf_redirect(ingress_ifindex, 0) };
    if ret != TC_ACT_REDIRECT {
        return Verdict::Drop(DropReason::RedirectFailed);
    }
    Verdict::Redirect(ret as i32)
}

/// Turns a TCP segment into the RST that answers it, in place.
#[inline(always)]
fn tcp_reset(ctx: &TcContext, ip: &Ipv4Hdr, l4: &L4) -> Result<(), i64> {
    let eth: EthHdr = ctx.load(0)?;
    let seq_be: u32 = ctx.load(l4.off + 4)?;
    let ack_in_be: u32 = ctx.load(l4.off + 8)?;
    let doff = ((ctx.load::<u8>(l4.off + 12)? >> 4) as u32) * 4;
    let tot_len = u32::from(u16::from_be(ip.tot_len_be));
    let payload = tot_len.saturating_sub(20 + doff);
    let mut ack = u32::from_be(seq_be).wrapping_add(payload);
    if l4.tcp_flags & TCP_SYN != 0 {
        ack = ack.wrapping_add(1);
    }
    if l4.tcp_flags & TCP_FIN != 0 {
        ack = ack.wrapping_add(1);
    }
    let (seq, flags) = if l4.tcp_flags & TCP_ACK != 0 {
        (u32::from_be(ack_in_be), TCP_RST)
    } else {
        (0, TCP_RST | TCP_ACK)
    };

    // Keep Ethernet + IPv4 (20) + TCP (20).
    // SAFETY: the context pointer is valid for the program's whole run.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 40) as u32, 0) };
    if ret != 0 {
        return Err(ret);
    }

    let mut pseudo = TcpPseudo {
        saddr: ip.daddr,
        daddr: ip.saddr,
        zero: 0,
        proto: IPPROTO_TCP,
        len_be: 20u16.to_be(),
        tcp: TcpHdr {
            sport_be: l4.dport_be,
            dport_be: l4.sport_be,
            seq_be: seq.to_be(),
            ack_be: ack.to_be(),
            doff_flags_be: ((5u16 << 12) | u16::from(flags)).to_be(),
            window_be: 0,
            check: 0,
            urg_be: 0,
        },
    };
    pseudo.tcp.check = csum_fold(csum_of(&mut pseudo));

    let mut iph = Ipv4Hdr {
        vihl: 0x45,
        tos: 0,
        tot_len_be: 40u16.to_be(),
        id_be: 0,
        frag_off_be: 0x4000u16.to_be(), // DF
        ttl: 64,
        proto: IPPROTO_TCP,
        check_be: 0,
        saddr: ip.daddr,
        daddr: ip.saddr,
    };
    iph.check_be = csum_fold(csum_of(&mut iph));

    let reply_eth = EthHdr {
        dst: eth.src,
        src: eth.dst,
        proto_be: ETH_P_IP.to_be(),
    };
    ctx.store(0, &reply_eth, 0)?;
    ctx.store(ETH_HLEN, &iph, 0)?;
    ctx.store(ETH_HLEN + 20, &pseudo.tcp, 0)?;
    Ok(())
}
