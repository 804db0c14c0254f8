//! weir's TC programs. Entry points only dispatch: each calls `try_<name>`
//! and turns its result into a TC action; the work lives in one module per
//! concern.
//!
//! The crate is only meaningful for `bpfel-unknown-none`; a host build (which
//! `cargo clippy --workspace` does) compiles it as an ordinary, empty binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys are passed by reference on purpose: a by-value key is one more
// copy on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod counters;
mod endpoints;
mod forward;
mod lb;
mod maps;
mod netdev;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use weir_common::DropReason;

/// What a program decided for a packet.
pub enum Verdict {
    /// Hand the packet to the kernel's stack unchanged.
    Pass,
    /// The packet was redirected; this is the helper's return value.
    Redirect(i32),
    /// Drop it, counted against the endpoint with the reason.
    Drop(DropReason),
}

#[inline(always)]
fn action(ctx: &TcContext, verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Redirect(ret) => ret,
        Verdict::Drop(reason) => {
            counters::count_drop(parse::ifindex(ctx), reason);
            TC_ACT_SHOT
        }
    }
}

/// TC ingress of a pod's host-side veth: everything the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let verdict = endpoints::try_from_pod(&ctx);
    action(&ctx, verdict)
}

/// TC egress of a pod's host-side veth: what the host stack delivers to the
/// pod (from the host itself, other nodes, or outside the cluster).
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let verdict = endpoints::try_to_pod(&ctx);
    action(&ctx, verdict)
}

/// TC ingress of the node's uplink: NodePort traffic from outside.
#[classifier]
pub fn from_netdev(ctx: TcContext) -> i32 {
    let verdict = netdev::try_from_netdev(&ctx);
    action(&ctx, verdict)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
