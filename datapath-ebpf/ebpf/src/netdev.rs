//! The node's uplink: NodePort traffic from outside the cluster, and the
//! replies of NodePort flows that were SNATed to this node.

use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, IpKey, SCOPE_NODEPORT, ServiceKey};

use crate::{
    Verdict, endpoints, forward,
    lb::{self, Pick, RevNat},
    maps::{CONNTRACK, ENDPOINTS, SERVICES},
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, Ipv4Hdr, ifindex, l4, ptr_at},
};

pub fn try_from_netdev(ctx: &TcContext) -> Verdict {
    let ifindex = ifindex(ctx);
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Pass;
    };
    // SAFETY: ptr_at checked the bounds.
    if u16::from_be(unsafe { (*eth).proto_be }) != ETH_P_IP {
        return Verdict::Pass;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Verdict::Pass;
    };
    // SAFETY: as above; copied out before any rewrite.
    let mut ip = unsafe { *ip };
    let Some(mut l4) = l4(ctx, &ip) else {
        return Verdict::Pass;
    };

    // The reply of a NodePort flow SNATed to this node: back to the client.
    match lb::rev_nat(ctx, &mut ip, &mut l4) {
        RevNat::Restored => return forward::forward(ctx, ip, ifindex),
        RevNat::Failed => return Verdict::Drop(DropReason::RewriteFailed),
        RevNat::NotNat => {}
    }

    let node = lb::mapped(ip.daddr);
    let key = ServiceKey {
        addr: node,
        port_be: l4.dport_be,
        proto: l4.proto,
        scope: SCOPE_NODEPORT,
    };
    // SAFETY: copied out at once.
    let Some(svc) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Verdict::Pass;
    };
    let now = lb::now_ns();
    let fkey = lb::flow(&ip, &l4);
    let ct = match lb::pick(&ip, &l4, &svc, &fkey, now) {
        Pick::Backend(ct) => ct,
        Pick::NoBackend => return lb::reject(ctx, &ip, &l4, ifindex),
        Pick::Missing => return Verdict::Drop(DropReason::BackendMissing),
    };
    let backend = ct.backend;
    // SAFETY: copied out at once.
    let local = unsafe { ENDPOINTS.get(IpKey { addr: backend.addr }) }.is_some();
    if local {
        // The backend answers the client directly; its from_pod restores the
        // node address and port as the source.
        lb::remember_reply(&fkey, &backend, node, fkey.dport_be, None, svc.id, now);
        if lb::dnat(ctx, &mut ip, &mut l4, &backend).is_err() {
            return Verdict::Drop(DropReason::RewriteFailed);
        }
        return endpoints::deliver(ctx, &ip, ifindex, false);
    }

    // A backend on another node: SNAT to this node so that the reply comes
    // back here to be restored.
    let port_be = if ct.snat_port_be != 0 {
        ct.snat_port_be
    } else {
        let Some(p) = lb::snat_port(&fkey, &backend, node) else {
            return Verdict::Drop(DropReason::RewriteFailed);
        };
        if let Some(entry) = CONNTRACK.get_ptr_mut(&fkey) {
            // SAFETY: valid until the program returns.
            unsafe { (*entry).snat_port_be = p };
        }
        p
    };
    lb::remember_reply(
        &fkey,
        &backend,
        node,
        fkey.dport_be,
        Some((node, port_be)),
        svc.id,
        now,
    );
    if lb::dnat(ctx, &mut ip, &mut l4, &backend).is_err()
        || lb::snat(ctx, &mut ip, &mut l4, lb::v4_of(&node), port_be).is_err()
    {
        return Verdict::Drop(DropReason::RewriteFailed);
    }
    forward::forward(ctx, ip, ifindex)
}
