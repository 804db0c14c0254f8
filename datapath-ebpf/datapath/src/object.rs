//! The eBPF object, compiled by build.rs for `bpfel-unknown-none`.

use sha2::{Digest, Sha256};

/// The ELF object holding every program and map of the datapath.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weir-ebpf"));

/// First 16 bytes of the object's SHA-256, stored in the `META` map so that a
/// loader can tell whether the pinned programs came from this object.
pub fn digest() -> [u8; 16] {
    digest_of(OBJECT)
}

pub fn digest_of(object: &[u8]) -> [u8; 16] {
    let full = Sha256::digest(object);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}
