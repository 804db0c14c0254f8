//! weir's address allocator.
//!
//! The `weir` CNI binary calls it in-process: [`Pool::from_config`] (or
//! [`Pool::from_cidrs`] with the node's pod CIDRs) validates the ranges,
//! [`Ipam::open`] opens the network's state directory, and
//! [`Ipam::allocate`] / [`Ipam::release`] / [`Ipam::gc`] serve ADD, DEL and
//! GC. Every operation holds one lock over the whole state, so any number of
//! processes may use the same directory at once, and every write is atomic,
//! so a process killed at any instant leaves a state that loads and never
//! hands out an address twice. `ipam/README.md` describes the files and the
//! argument.
//!
//! # Invariants
//!
//! The reservations (address → key) are the truth about who holds what;
//! their uniqueness comes from the store (one file per address, created
//! with a link that fails when it exists). A key's record lists every
//! address the key holds, because the allocator writes the record *before*
//! reserving and removes it only *after* unreserving. The record may list
//! more (an interrupted allocation or release); those extra entries are
//! ignored, and repaired by the next allocate, release or gc of that key.

mod config;
mod error;
mod pool;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub use config::{IpamConfig, RangeConfig};
pub use error::IpamError;
pub use pool::{Candidates, Pool, Range, RangeSet};
pub use store::{DiskStore, LockMode, MemStore, Store};

/// The plugin-specific CNI error code for an exhausted pool.
pub const EXHAUSTED_CODE: u32 = 100;

/// Longest encoded key, so that `<key>.json` fits a file name everywhere.
const MAX_STEM: usize = 240;

/// What an allocation belongs to: one interface of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Key {
    pub container_id: String,
    pub ifname: String,
}

impl Key {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Key {
        Key {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// An injective, file-name-safe spelling: `<container id>+<ifname>`,
    /// each part percent-encoded outside `[A-Za-z0-9_-]`.
    pub fn file_stem(&self) -> String {
        fn encode(s: &str, out: &mut String) {
            for b in s.bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        let mut out = String::with_capacity(self.container_id.len() + self.ifname.len() + 1);
        encode(&self.container_id, &mut out);
        out.push('+');
        encode(&self.ifname, &mut out);
        out
    }

    /// Whether this key can name an allocation.
    pub fn validate(&self) -> Result<(), IpamError> {
        let invalid = |reason: &str| IpamError::InvalidKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
            reason: reason.into(),
        };
        if self.container_id.is_empty() {
            return Err(invalid("empty container id"));
        }
        if self.ifname.is_empty() {
            return Err(invalid("empty interface name"));
        }
        if self.file_stem().len() > MAX_STEM {
            return Err(invalid("too long"));
        }
        Ok(())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// One address of an allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocatedIp {
    /// The address with its subnet's prefix length.
    pub address: IpNetwork,
    pub gateway: Option<IpAddr>,
}

/// What a key holds: one address per range set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub key: Key,
    pub ips: Vec<AllocatedIp>,
    /// Free-form, for operators (e.g. the pod's namespace and name).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Allocation {
    fn lists(&self, ip: IpAddr) -> bool {
        self.ips.iter().any(|a| a.address.ip() == ip)
    }
}

/// How full one range set is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RangeSetStatus {
    pub description: String,
    pub allocated: u128,
    pub capacity: u128,
}

/// How full the pool is; see [`PoolStatus::can_allocate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub sets: Vec<RangeSetStatus>,
}

impl PoolStatus {
    /// Whether an ADD can be served: every range set has a free address.
    pub fn can_allocate(&self) -> bool {
        self.sets.iter().all(|s| s.allocated < s.capacity)
    }
}

/// What [`Ipam::check`] found that is not as it should be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Reservations whose key's record does not list them: a leak (never
    /// left by a crash; only by hands or another program). `gc` frees them.
    pub orphans: Vec<(IpAddr, Key)>,
    /// Record entries the key does not hold: what an interrupted allocate or
    /// release leaves. Harmless; the key's next operation or `gc` drops them.
    pub dangling: Vec<(Key, IpAddr)>,
    /// Reservations the current pool could not hand out (the config
    /// changed). Still held; freed by release or gc of their key.
    pub outside_pool: Vec<(IpAddr, Key)>,
}

impl CheckReport {
    /// No leak.
    pub fn is_clean(&self) -> bool {
        self.orphans.is_empty()
    }
}

/// The allocator for one network: a validated pool over a store.
pub struct Ipam<S = DiskStore> {
    store: S,
    pool: Pool,
}

impl Ipam<DiskStore> {
    /// Opens the state in `dir` (`<state dir>/<network name>`, e.g.
    /// `/var/lib/weir/ipam/weir`), creating it if needed.
    pub fn open(dir: &Path, pool: Pool) -> Result<Ipam, IpamError> {
        Ok(Ipam {
            store: DiskStore::open(dir)?,
            pool,
        })
    }
}

impl<S: Store> Ipam<S> {
    pub fn with_store(store: S, pool: Pool) -> Ipam<S> {
        Ipam { store, pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// One address from every range set for `key`; the same addresses again
    /// when `key` already holds them. Addresses are handed out round-robin
    /// after the last one handed out from their set. Addresses the key
    /// holds that the pool can no longer hand out (the ranges changed since)
    /// are freed.
    pub fn allocate(
        &self,
        key: &Key,
        labels: &BTreeMap<String, String>,
    ) -> Result<Allocation, IpamError> {
        key.validate()?;
        self.store
            .locked(LockMode::Exclusive, || self.allocate_locked(key, labels))
    }

    fn allocate_locked(
        &self,
        key: &Key,
        labels: &BTreeMap<String, String>,
    ) -> Result<Allocation, IpamError> {
        let record = self.store.record(key)?;
        let held = match &record {
            Some(r) => self.held(r)?,
            None => Vec::new(),
        };

        // What the key already holds, per set; anything else it holds (the
        // config changed since) is freed below.
        let sets = self.pool.sets();
        let mut per_set: Vec<Option<AllocatedIp>> = vec![None; sets.len()];
        let mut extra = Vec::new();
        for a in held {
            match self.pool.set_of(a.address.ip()) {
                Some(i) if per_set[i].is_none() => per_set[i] = Some(a),
                _ => extra.push(a),
            }
        }

        let mut fresh = Vec::new();
        for (i, slot) in per_set.iter_mut().enumerate() {
            if slot.is_none() {
                let ip = self.next_free(i)?;
                fresh.push((i, ip));
                *slot = Some(self.pool.describe(ip));
            }
        }
        let wanted = Allocation {
            key: key.clone(),
            ips: per_set.into_iter().flatten().collect(),
            labels: match &record {
                Some(r) if fresh.is_empty() => r.labels.clone(),
                _ => labels.clone(),
            },
        };
        if record.as_ref() == Some(&wanted) {
            return Ok(wanted);
        }

        // Unreserve before the record stops listing them.
        for a in &extra {
            self.store.unreserve(a.address.ip())?;
        }
        if !extra.is_empty() {
            self.store.sync()?;
        }
        // The record first: from here on it lists every address the key
        // may hold, so a crash between here and the end leaks nothing.
        self.store.put_record(&wanted)?;
        self.store.sync()?;
        let mut taken = Vec::with_capacity(fresh.len());
        if let Err(e) = self.reserve_fresh(key, &fresh, &mut taken) {
            self.give_back(key, record.as_ref(), &taken);
            return Err(e);
        }
        for &(set, ip) in &fresh {
            self.store.set_last_reserved(set, ip)?;
        }
        Ok(wanted)
    }

    fn reserve_fresh(
        &self,
        key: &Key,
        fresh: &[(usize, IpAddr)],
        taken: &mut Vec<IpAddr>,
    ) -> Result<(), IpamError> {
        for &(_, ip) in fresh {
            if self.store.reserve(ip, key)? {
                taken.push(ip);
            } else if self.store.owner(ip)?.as_ref() != Some(key) {
                // next_free saw it free under the lock: somebody wrote
                // without the lock. Our record's entry is merely dangling.
                return Err(IpamError::CorruptState {
                    path: self.store.reservation_path(ip),
                    reason: format!("{ip} was reserved by a writer not holding the lock"),
                });
            }
        }
        Ok(())
    }

    /// After a failed allocation: frees what it reserved, then puts the
    /// key's record back as it was. Best effort (the failure may be the
    /// disk's); what cannot be undone stays listed by the record, so it is
    /// never leaked, and the key's release or gc frees it.
    fn give_back(&self, key: &Key, record: Option<&Allocation>, taken: &[IpAddr]) {
        let freed = taken.iter().all(|&ip| self.store.unreserve(ip).is_ok());
        if freed && self.store.sync().is_ok() {
            let _ = match record {
                Some(r) => self.store.put_record(r),
                None => self.store.remove_record(key),
            };
        }
    }

    /// The first free address of set `i` after its cursor.
    fn next_free(&self, i: usize) -> Result<IpAddr, IpamError> {
        let set = &self.pool.sets()[i];
        let cursor = self.store.last_reserved(i)?;
        for ip in set.candidates_after(cursor) {
            if !self.store.is_reserved(ip)? {
                return Ok(ip);
            }
        }
        // Every candidate was reserved.
        Err(IpamError::Exhausted {
            set: set.to_string(),
            allocated: set.capacity(),
            capacity: set.capacity(),
        })
    }

    /// The entries of `record` that its key really holds.
    fn held(&self, record: &Allocation) -> Result<Vec<AllocatedIp>, IpamError> {
        let mut out = Vec::with_capacity(record.ips.len());
        for a in &record.ips {
            if self.store.owner(a.address.ip())?.as_ref() == Some(&record.key) {
                out.push(a.clone());
            }
        }
        Ok(out)
    }

    /// What `key` holds, if anything.
    pub fn get(&self, key: &Key) -> Result<Option<Allocation>, IpamError> {
        key.validate()?;
        self.store.locked(LockMode::Shared, || {
            let Some(record) = self.store.record(key)? else {
                return Ok(None);
            };
            let ips = self.held(&record)?;
            Ok((!ips.is_empty()).then_some(Allocation { ips, ..record }))
        })
    }

    /// Frees what `key` holds and returns it; `Ok(None)` when it held
    /// nothing. Safe to repeat.
    pub fn release(&self, key: &Key) -> Result<Option<Allocation>, IpamError> {
        key.validate()?;
        self.store
            .locked(LockMode::Exclusive, || self.release_locked(key))
    }

    fn release_locked(&self, key: &Key) -> Result<Option<Allocation>, IpamError> {
        let Some(record) = self.store.record(key)? else {
            return Ok(None);
        };
        let held = self.held(&record)?;
        // Reservations first, record last: the record keeps listing every
        // address still reserved.
        for a in &held {
            self.store.unreserve(a.address.ip())?;
        }
        self.store.sync()?;
        self.store.remove_record(key)?;
        Ok((!held.is_empty()).then_some(Allocation {
            ips: held,
            ..record
        }))
    }

    /// Frees everything not held by a key in `valid` (and any reservation
    /// its key's record does not list), returning what it freed, by key.
    pub fn gc(&self, valid: &[Key]) -> Result<Vec<Allocation>, IpamError> {
        let valid: BTreeSet<&Key> = valid.iter().collect();
        self.store.locked(LockMode::Exclusive, || {
            self.store.tidy()?;
            let records: BTreeMap<Key, Allocation> = self
                .store
                .records()?
                .into_iter()
                .map(|r| (r.key.clone(), r))
                .collect();
            let mut freed: BTreeMap<Key, Allocation> = BTreeMap::new();
            for (ip, owner) in self.store.reservations()? {
                let record = records.get(&owner);
                let listed = record.is_some_and(|r| r.lists(ip));
                if valid.contains(&owner) && listed {
                    continue;
                }
                self.store.unreserve(ip)?;
                let entry = freed.entry(owner.clone()).or_insert_with(|| Allocation {
                    key: owner.clone(),
                    ips: Vec::new(),
                    labels: record.map(|r| r.labels.clone()).unwrap_or_default(),
                });
                entry.ips.push(
                    record
                        .and_then(|r| r.ips.iter().find(|a| a.address.ip() == ip).cloned())
                        .unwrap_or_else(|| self.pool.describe(ip)),
                );
            }
            self.store.sync()?;
            // Then the records: drop those of invalid keys, and trim valid
            // ones to what their key holds.
            for (key, record) in &records {
                let held = if valid.contains(key) {
                    self.held(record)?
                } else {
                    Vec::new()
                };
                if held.is_empty() {
                    self.store.remove_record(key)?;
                } else if held.len() != record.ips.len() {
                    self.store.put_record(&Allocation {
                        ips: held,
                        ..record.clone()
                    })?;
                }
            }
            Ok(freed.into_values().collect())
        })
    }

    /// Everything held, by key.
    pub fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        self.store.locked(LockMode::Shared, || {
            let mut records: BTreeMap<Key, Allocation> = self
                .store
                .records()?
                .into_iter()
                .map(|r| (r.key.clone(), r))
                .collect();
            let mut out: BTreeMap<Key, Allocation> = BTreeMap::new();
            for (ip, owner) in self.store.reservations()? {
                let record = records.get_mut(&owner);
                let entry = out.entry(owner.clone()).or_insert_with(|| Allocation {
                    key: owner.clone(),
                    ips: Vec::new(),
                    labels: record
                        .as_ref()
                        .map(|r| r.labels.clone())
                        .unwrap_or_default(),
                });
                entry.ips.push(
                    record
                        .and_then(|r| r.ips.iter().find(|a| a.address.ip() == ip).cloned())
                        .unwrap_or_else(|| self.pool.describe(ip)),
                );
            }
            // In the record's order (one per set), not the address order.
            for a in out.values_mut() {
                if let Some(r) = records.get(&a.key) {
                    a.ips.sort_by_key(|ip| {
                        r.ips
                            .iter()
                            .position(|x| x.address.ip() == ip.address.ip())
                            .unwrap_or(usize::MAX)
                    });
                }
            }
            Ok(out.into_values().collect())
        })
    }

    /// How full each range set is.
    pub fn status(&self) -> Result<PoolStatus, IpamError> {
        let reserved = self
            .store
            .locked(LockMode::Shared, || self.store.reserved())?;
        let sets = self.pool.sets();
        let mut allocated = vec![0u128; sets.len()];
        for ip in reserved {
            if let Some(i) = self.pool.set_of(ip) {
                allocated[i] += 1;
            }
        }
        Ok(PoolStatus {
            sets: sets
                .iter()
                .zip(allocated)
                .map(|(s, allocated)| RangeSetStatus {
                    description: s.to_string(),
                    allocated,
                    capacity: s.capacity(),
                })
                .collect(),
        })
    }

    /// Cross-checks reservations against records.
    pub fn check(&self) -> Result<CheckReport, IpamError> {
        self.store.locked(LockMode::Shared, || {
            let records: BTreeMap<Key, Allocation> = self
                .store
                .records()?
                .into_iter()
                .map(|r| (r.key.clone(), r))
                .collect();
            let reservations: BTreeMap<IpAddr, Key> =
                self.store.reservations()?.into_iter().collect();
            let mut report = CheckReport::default();
            for (&ip, owner) in &reservations {
                if !records.get(owner).is_some_and(|r| r.lists(ip)) {
                    report.orphans.push((ip, owner.clone()));
                }
                if self.pool.set_of(ip).is_none() {
                    report.outside_pool.push((ip, owner.clone()));
                }
            }
            for (key, record) in &records {
                for a in &record.ips {
                    let ip = a.address.ip();
                    if reservations.get(&ip) != Some(key) {
                        report.dangling.push((key.clone(), ip));
                    }
                }
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Two different keys never share a record file, and no key's file
        /// name is hidden or a path. The small alphabet makes look-alike
        /// keys (`a+` / `a%2B`) common.
        #[test]
        fn file_stems_are_injective_and_safe(
            a in ("[a+%.2B/]{0,4}", "[a+%.2B/]{0,3}"),
            b in ("[a+%.2B/]{0,4}", "[a+%.2B/]{0,3}"),
            c in ("\\PC{0,12}", "\\PC{0,6}"),
        ) {
            let kc = Key::new(c.0, c.1);
            prop_assert!(kc.file_stem().bytes().all(|x| x.is_ascii_graphic() && x != b'/'));
            let (ka, kb) = (Key::new(a.0, a.1), Key::new(b.0, b.1));
            let (sa, sb) = (ka.file_stem(), kb.file_stem());
            prop_assert_eq!(ka == kb, sa == sb);
            prop_assert!(!sa.starts_with('.') && !sa.contains('/'));
            prop_assert!(sa.bytes().all(|c| c.is_ascii_graphic()));
        }
    }

    #[test]
    fn file_stems_keep_plain_keys_readable() {
        let stem = Key::new("8f1c0e2a_b-c", "eth0").file_stem();
        assert_eq!(stem, "8f1c0e2a_b-c+eth0");
        assert_eq!(Key::new("a+b", "c.d").file_stem(), "a%2Bb+c%2Ed");
    }
}
