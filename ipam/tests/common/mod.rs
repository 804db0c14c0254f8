//! Shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use weir_ipam::{Allocation, Pool, RangeConfig};

/// A temporary directory on tmpfs when there is one: the code runs the same
/// fsyncs there, they just cost nothing, which keeps the suite fast.
pub fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("weir-ipam-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("weir-ipam-")
        .tempdir()
        .expect("tempdir")
}

pub fn range(subnet: &str) -> RangeConfig {
    RangeConfig {
        subnet: subnet.into(),
        range_start: None,
        range_end: None,
        gateway: None,
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

/// Every address held, asserting none is held twice and each is one the
/// pool may hand out, in the set of its position.
pub fn assert_sound(pool: &Pool, list: &[Allocation]) -> BTreeSet<IpAddr> {
    let mut seen = BTreeSet::new();
    for a in list {
        assert_eq!(a.ips.len(), pool.sets().len(), "{a:?}");
        for (i, x) in a.ips.iter().enumerate() {
            let ip = x.address.ip();
            assert!(seen.insert(ip), "{ip} held twice: {list:?}");
            assert_eq!(
                pool.set_of(ip),
                Some(i),
                "{ip} of {} is not from set {i}",
                a.key
            );
        }
    }
    seen
}

/// Like [`assert_sound`], for a state where a killed operation may have
/// left a key holding fewer addresses than there are sets.
pub fn assert_no_duplicate(pool: &Pool, list: &[Allocation]) {
    let mut seen = BTreeSet::new();
    for a in list {
        for x in &a.ips {
            let ip = x.address.ip();
            assert!(seen.insert(ip), "{ip} held twice: {list:?}");
            assert!(
                pool.set_of(ip).is_some(),
                "{ip} of {} is outside the pool",
                a.key
            );
        }
    }
}

/// Entries of a directory, hidden ones included.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// xorshift64*, seeded from `WEIR_IPAM_SEED` or the clock (printed, so a
/// failure can be replayed).
pub struct Rng(u64);

impl Rng {
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("WEIR_IPAM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{test}: WEIR_IPAM_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
