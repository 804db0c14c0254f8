//! Per-endpoint traffic and drop counters (per-CPU maps, summed by user space).

use weir_common::{DropKey, DropReason, Traffic};

use crate::maps::{DROPS, TRAFFIC};

/// `BPF_NOEXIST`: insert only if absent (another CPU may have won the race,
/// which is fine: per-CPU values are separate).
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub fn count_from_pod(ifindex: u32, bytes: u32) {
    if let Some(t) = TRAFFIC.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value: no other CPU writes this copy.
        unsafe {
            (*t).from_pod_packets += 1;
            (*t).from_pod_bytes += u64::from(bytes);
        }
    } else {
        let t = Traffic {
            from_pod_packets: 1,
            from_pod_bytes: u64::from(bytes),
            to_pod_packets: 0,
            to_pod_bytes: 0,
        };
        let _ = TRAFFIC.insert(ifindex, t, BPF_NOEXIST);
    }
}

#[inline(always)]
pub fn count_to_pod(ifindex: u32, bytes: u32) {
    if let Some(t) = TRAFFIC.get_ptr_mut(ifindex) {
        // SAFETY: per-CPU value: no other CPU writes this copy.
        unsafe {
            (*t).to_pod_packets += 1;
            (*t).to_pod_bytes += u64::from(bytes);
        }
    } else {
        let t = Traffic {
            from_pod_packets: 0,
            from_pod_bytes: 0,
            to_pod_packets: 1,
            to_pod_bytes: u64::from(bytes),
        };
        let _ = TRAFFIC.insert(ifindex, t, BPF_NOEXIST);
    }
}

#[inline(always)]
pub fn count_drop(ifindex: u32, reason: DropReason) {
    let key = DropKey {
        ifindex,
        reason: reason as u32,
    };
    if let Some(n) = DROPS.get_ptr_mut(key) {
        // SAFETY: per-CPU value: no other CPU writes this copy.
        unsafe { *n += 1 };
    } else {
        let _ = DROPS.insert(key, 1u64, BPF_NOEXIST);
    }
}
