//! Pod-facing logic: anti-spoofing on what a pod sends, and same-node delivery
//! by `bpf_redirect_peer` straight into the destination pod.

use aya_ebpf::{helpers::generated::bpf_redirect_peer, programs::TcContext};
use weir_common::{DropReason, IpKey};

use crate::{
    Verdict, counters, forward,
    maps::ENDPOINTS,
    parse::{ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, ifindex, ptr_at},
};

pub fn try_from_pod(ctx: &TcContext) -> Verdict {
    let ifindex = ifindex(ctx);
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    // SAFETY: ptr_at checked that the header lies inside the packet.
    let eth_proto = u16::from_be(unsafe { (*eth).proto_be });
    match eth_proto {
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
    // SAFETY: as above.
    let (saddr, daddr, src_mac) = unsafe { ((*ip).saddr, (*ip).daddr, (*eth).src) };

    // Anti-spoofing: the source must be an endpoint that lives behind the
    // interface the packet came in on, with that endpoint's MAC.
    // SAFETY: the value is read at once, never held across a map update.
    let Some(me) = (unsafe { ENDPOINTS.get(IpKey::from_v4_octets(saddr)) }) else {
        return Verdict::Drop(DropReason::SpoofedIp);
    };
    if me.ifindex != ifindex {
        return Verdict::Drop(DropReason::SpoofedIp);
    }
    if me.mac != src_mac {
        return Verdict::Drop(DropReason::SpoofedMac);
    }
    counters::count_from_pod(ifindex, ctx.len());

    // Same node: deliver straight into the destination pod's namespace.
    // SAFETY: as above.
    if let Some(dst) = unsafe { ENDPOINTS.get(IpKey::from_v4_octets(daddr)) } {
        let (dst_ifindex, dst_mac, dst_gw_mac) = (dst.ifindex, dst.mac, dst.host_mac);
        // SAFETY: bounds were checked by ptr_at; nothing resized the packet.
        unsafe {
            (*eth).dst = dst_mac;
            (*eth).src = dst_gw_mac;
        }
        counters::count_to_pod(dst_ifindex, ctx.len());
        // SAFETY: a plain helper call with scalar arguments.
        let ret = unsafe { bpf_redirect_peer(dst_ifindex, 0) } as i32;
        // TC_ACT_REDIRECT is 7; anything else means the helper refused.
        if ret != 7 {
            return Verdict::Drop(DropReason::RedirectFailed);
        }
        return Verdict::Redirect(ret);
    }
    // SAFETY: as above; the header is copied out before any helper rewrites
    // the packet.
    let ip = unsafe { *ip };
    forward::leave_node(ctx, ip, ifindex)
}

pub fn try_to_pod(ctx: &TcContext) -> Verdict {
    counters::count_to_pod(ifindex(ctx), ctx.len());
    Verdict::Pass
}
