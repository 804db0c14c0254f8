//! weir's conformance suite and test topologies: named network namespaces,
//! a CNI invoker that runs plugins exactly as a runtime does, and a test
//! node (its own namespace, pins, state and log) that knows how to tell
//! whether anything was left behind.
//!
//! Every resource a test makes carries a random prefix and is removed by a
//! `Drop` guard, so that a failing test cleans up too and parallel tests never
//! meet.

pub mod cluster;
pub mod cni;
pub mod netns;
pub mod node;
pub mod suite;

use std::io::Read;

/// A random lowercase hex string of `n` characters (at most 32).
pub fn random_hex(n: usize) -> String {
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id()) << 64;
        bytes = t.to_le_bytes();
    }
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    s.truncate(n.min(32));
    s
}

/// A small deterministic-per-seed PRNG (xorshift) for tests that pick random
/// points; seeded from /dev/urandom and printed by the caller so that a
/// failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn from_entropy() -> Rng {
        Rng::new(u64::from_str_radix(&random_hex(16), 16).unwrap_or(0x9e37_79b9_7f4a_7c15))
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}
