//! Traffic that leaves the pod's node: to another node's pods (forwarded by
//! FIB lookup and redirect, bypassing the host stack) or out of the cluster
//! (marked for masquerade and handed to the stack).

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use weir_common::{IpKey, MARK_MASK, MARK_MASQUERADE};

use crate::{
    Verdict,
    maps::NODES,
    parse::{ETH_HLEN, EthHdr, Ipv4Hdr},
};

const AF_INET: u8 = 2;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// `struct bpf_redir_neigh`: the next hop for `bpf_redirect_neigh`.
#[repr(C)]
struct RedirNeigh {
    nh_family: u32,
    addr: [u32; 4],
}
const TC_ACT_REDIRECT: i64 = 7;
/// Offset of the IPv4 header checksum in the frame.
const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;
/// Offset of the IPv4 TTL in the frame.
const IPV4_TTL_OFF: usize = ETH_HLEN + 8;

/// Decides what happens to an IPv4 packet whose destination is not a pod on
/// this node. `nat_reply`: the packet is a service reply whose source was
/// restored (possibly to this node's own address, which the stack would
/// reject as martian): it is forwarded by FIB lookup and never masqueraded.
#[inline(always)]
pub fn leave_node(ctx: &TcContext, ip: Ipv4Hdr, ingress_ifindex: u32, nat_reply: bool) -> Verdict {
    let dst = IpKey::from_v4_octets(ip.daddr);
    let key = aya_ebpf::maps::lpm_trie::Key::new(128, dst.addr);
    if nat_reply || NODES.get(&key).is_some() {
        return forward(ctx, ip, ingress_ifindex);
    }
    // Out of the cluster: the stack routes it, and the masquerade rule
    // rewrites the source to the node's address.
    // SAFETY: the context pointer is valid for the program's whole run. The
    // verifier only allows whole-word context writes, so keep the compiler
    // from narrowing this one to the changed byte.
    unsafe {
        let mark = core::ptr::addr_of_mut!((*ctx.skb.skb).mark);
        let old = core::ptr::read_volatile(mark);
        core::ptr::write_volatile(mark, (old & !MARK_MASK) | MARK_MASQUERADE);
    }
    Verdict::Pass
}

/// Forwards to another node's pod by FIB lookup. Falls back to the stack
/// whenever the lookup does not resolve fully (no neighbour yet, TTL
/// expiring, forwarding disabled, ...): the stack does the right thing there,
/// only slower.
#[inline(always)]
pub fn forward(ctx: &TcContext, ip: Ipv4Hdr, ingress_ifindex: u32) -> Verdict {
    if ip.ttl <= 1 {
        return Verdict::Pass; // the stack sends the ICMP time-exceeded
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut params: FibParams = unsafe { zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len_be);
    params.ifindex = ingress_ifindex;
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.saddr);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.daddr);
    // SAFETY: params is a live, correctly sized bpf_fib_lookup.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    if ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH {
        return Verdict::Pass;
    }
    // Decrement the TTL as a router does, fixing the header checksum.
    let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    if ctx
        .l3_csum_replace(IPV4_CSUM_OFF, u64::from(old), u64::from(new), 2)
        .is_err()
        || ctx.store(IPV4_TTL_OFF, &(ip.ttl - 1), 0).is_err()
    {
        return Verdict::Drop(weir_common::DropReason::RewriteFailed);
    }
    let ret = if ret == BPF_FIB_LKUP_RET_NO_NEIGH {
        // The next hop's MAC is not known yet: let the kernel resolve it
        // (the lookup left the next hop in ipv4_dst).
        let mut nh = RedirNeigh {
            nh_family: u32::from(AF_INET),
            // SAFETY: plain data out of the lookup's union.
            addr: [unsafe { params.__bindgen_anon_4.ipv4_dst }, 0, 0, 0],
        };
        // SAFETY: nh is a live, correctly sized bpf_redir_neigh.
        unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh as *mut RedirNeigh as *mut _,
                size_of::<RedirNeigh>() as i32,
                0,
            )
        }
    } else {
        let eth = EthHdr {
            dst: params.dmac,
            src: params.smac,
            proto_be: u16::to_be(crate::parse::ETH_P_IP),
        };
        if ctx.store(0, &eth, 0).is_err() {
            return Verdict::Drop(weir_common::DropReason::RewriteFailed);
        }
        // SAFETY: a plain helper call with scalar arguments.
        unsafe { bpf_redirect(params.ifindex, 0) }
    };
    if ret != TC_ACT_REDIRECT {
        return Verdict::Drop(weir_common::DropReason::RedirectFailed);
    }
    Verdict::Redirect(ret as i32)
}
