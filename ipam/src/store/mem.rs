//! An in-memory [`Store`] for tests: same contract, no files.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use super::{LockMode, Store};
use crate::{Allocation, IpamError, Key};

/// Keeps everything in maps behind a mutex; `locked` serialises callers
/// within the process.
#[derive(Debug, Default)]
pub struct MemStore {
    op: Mutex<()>,
    state: Mutex<MemState>,
}

#[derive(Debug, Default)]
struct MemState {
    reservations: BTreeMap<IpAddr, Key>,
    records: BTreeMap<Key, Allocation>,
    last: BTreeMap<usize, IpAddr>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn state(&self) -> MutexGuard<'_, MemState> {
        // A panic in another test thread must not hide this one's result.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn locked<T>(
        &self,
        _mode: LockMode,
        f: impl FnOnce() -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        let _guard = self.op.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    fn reservation_path(&self, ip: IpAddr) -> PathBuf {
        PathBuf::from(format!("memory:ips/{ip}"))
    }

    fn owner(&self, ip: IpAddr) -> Result<Option<Key>, IpamError> {
        Ok(self.state().reservations.get(&ip).cloned())
    }

    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError> {
        Ok(self.state().reservations.contains_key(&ip))
    }

    fn reserve(&self, ip: IpAddr, key: &Key) -> Result<bool, IpamError> {
        let mut state = self.state();
        if state.reservations.contains_key(&ip) {
            return Ok(false);
        }
        state.reservations.insert(ip, key.clone());
        Ok(true)
    }

    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.state().reservations.remove(&ip);
        Ok(())
    }

    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.state().reservations.keys().copied().collect())
    }

    fn record(&self, key: &Key) -> Result<Option<Allocation>, IpamError> {
        Ok(self.state().records.get(key).cloned())
    }

    fn put_record(&self, a: &Allocation) -> Result<(), IpamError> {
        self.state().records.insert(a.key.clone(), a.clone());
        Ok(())
    }

    fn remove_record(&self, key: &Key) -> Result<(), IpamError> {
        self.state().records.remove(key);
        Ok(())
    }

    fn records(&self) -> Result<Vec<Allocation>, IpamError> {
        Ok(self.state().records.values().cloned().collect())
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        Ok(self.state().last.get(&set).copied())
    }

    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        self.state().last.insert(set, ip);
        Ok(())
    }

    fn sync(&self) -> Result<(), IpamError> {
        Ok(())
    }

    fn tidy(&self) -> Result<(), IpamError> {
        Ok(())
    }
}
