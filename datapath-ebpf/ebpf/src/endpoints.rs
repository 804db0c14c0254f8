//! Pod-facing logic: anti-spoofing on what a pod sends, and same-node delivery
//! by `bpf_redirect_peer` straight into the destination pod.

use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use weir_common::{DropReason, IpKey};

use crate::{
    Verdict, counters, forward,
    lb::{self, Lb},
    maps::ENDPOINTS,
    parse::{ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, ifindex, l4, ptr_at},
};

pub fn try_from_pod(ctx: &TcContext) -> Verdict {
    let ifindex = ifindex(ctx);
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let eth = unsafe { *eth };
    match u16::from_be(eth.proto_be) {
        ETH_P_IP => {}
        // ARP, and IPv6 until the datapath speaks it, go to the stack.
        ETH_P_ARP | ETH_P_IPV6 => {
            counters::count_from_pod(ifindex, ctx.len());
            return Verdict::Pass;
        }
        _ => {
            counters::count_from_pod(ifindex, ctx.len());
            return Verdict::Pass;
        }
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // SAFETY: as above. Headers are copied out: helpers that rewrite the
    // packet invalidate pointers into it.
    let mut ip = unsafe { *ip };

    // Anti-spoofing: the source must be an endpoint that lives behind the
    // interface the packet came in on, with that endpoint's MAC.
    // SAFETY: the value is copied out at once.
    let Some(me) = (unsafe { ENDPOINTS.get(IpKey::from_v4_octets(ip.saddr)) }).copied() else {
        return Verdict::Drop(DropReason::SpoofedIp);
    };
    if me.ifindex != ifindex {
        return Verdict::Drop(DropReason::SpoofedIp);
    }
    if me.mac != eth.src {
        return Verdict::Drop(DropReason::SpoofedMac);
    }
    counters::count_from_pod(ifindex, ctx.len());

    let mut nat_reply = false;
    if let Some(mut l4) = l4(ctx, &ip) {
        match lb::from_pod(ctx, &mut ip, &mut l4, ifindex, &mut nat_reply) {
            Lb::Continue => {}
            Lb::Done(verdict) => return verdict,
        }
    }
    deliver(ctx, &ip, ifindex, nat_reply)
}

/// Sends an IPv4 packet on its way: straight into a pod on this node, or off
/// the node.
#[inline(always)]
pub fn deliver(ctx: &TcContext, ip: &Ipv4Hdr, ingress_ifindex: u32, nat_reply: bool) -> Verdict {
    // SAFETY: the value is copied out at once.
    if let Some(dst) = unsafe { ENDPOINTS.get(IpKey::from_v4_octets(ip.daddr)) }.copied() {
        let eth = EthHdr {
            dst: dst.mac,
            src: dst.host_mac,
            proto_be: ETH_P_IP.to_be(),
        };
        if ctx.store(0, &eth, 0).is_err() {
            return Verdict::Drop(DropReason::RewriteFailed);
        }
        counters::count_to_pod(dst.ifindex, ctx.len());
        // SAFETY: a plain helper call with scalar arguments.
        let ret = unsafe { bpf_redirect_peer(dst.ifindex, 0) } as i32;
        // TC_ACT_REDIRECT is 7; anything else means the helper refused.
        if ret != 7 {
            return Verdict::Drop(DropReason::RedirectFailed);
        }
        return Verdict::Redirect(ret);
    }
    forward::leave_node(ctx, *ip, ingress_ifindex, nat_reply)
}

pub fn try_to_pod(ctx: &TcContext) -> Verdict {
    counters::count_to_pod(ifindex(ctx), ctx.len());
    // Replies of NATed flows whose backend is on another node reach the
    // client here, through the host stack: restore the frontend as source.
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
    // SAFETY: as above.
    let mut ip = unsafe { *ip };
    if let Some(mut l4) = l4(ctx, &ip)
        && let lb::RevNat::Failed = lb::rev_nat(ctx, &mut ip, &mut l4)
    {
        return Verdict::Drop(DropReason::RewriteFailed);
    }
    Verdict::Pass
}
