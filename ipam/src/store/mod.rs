//! Where allocations live. [`DiskStore`] is what weir runs with;
//! [`MemStore`] backs unit and property tests.
//!
//! A store is a dumb container: the allocator ([`crate::Ipam`]) decides what
//! to write and in which order, and calls every method but
//! [`Store::locked`] only from inside [`Store::locked`].

mod disk;
mod mem;

use std::net::IpAddr;
use std::path::PathBuf;

pub use disk::DiskStore;
pub use mem::MemStore;

use crate::{Allocation, IpamError, Key};

/// How [`Store::locked`] excludes other users of the same state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Readers: many at once, no writer.
    Shared,
    /// Writers: alone.
    Exclusive,
}

/// Reservations (address → key, unique per address), records (key → its
/// allocation, with labels) and one round-robin cursor per range set.
pub trait Store {
    /// Runs `f` holding the lock over the whole state, across processes,
    /// and makes what it changed durable ([`Store::sync`]) before letting go.
    fn locked<T>(
        &self,
        mode: LockMode,
        f: impl FnOnce() -> Result<T, IpamError>,
    ) -> Result<T, IpamError>;

    /// Where the reservation of `ip` lives, for messages.
    fn reservation_path(&self, ip: IpAddr) -> PathBuf;

    /// Who holds `ip`.
    fn owner(&self, ip: IpAddr) -> Result<Option<Key>, IpamError>;

    /// Whether anyone holds `ip` (without reading who).
    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError>;

    /// Atomically reserves `ip` for `key`; `Ok(false)` when it was taken.
    /// Visible to every reader on return; durable after [`Store::sync`].
    fn reserve(&self, ip: IpAddr, key: &Key) -> Result<bool, IpamError>;

    /// Drops the reservation of `ip`, if any; durable after [`Store::sync`].
    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError>;

    /// Every reserved address.
    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError>;

    /// Every reservation with its holder.
    fn reservations(&self) -> Result<Vec<(IpAddr, Key)>, IpamError> {
        let mut out = Vec::new();
        for ip in self.reserved()? {
            if let Some(key) = self.owner(ip)? {
                out.push((ip, key));
            }
        }
        Ok(out)
    }

    /// The record of `key`.
    fn record(&self, key: &Key) -> Result<Option<Allocation>, IpamError>;

    /// Atomically replaces the record of `a.key`; durable after
    /// [`Store::sync`].
    fn put_record(&self, a: &Allocation) -> Result<(), IpamError>;

    /// Removes the record of `key`, if any; durable after [`Store::sync`].
    fn remove_record(&self, key: &Key) -> Result<(), IpamError>;

    /// Every record.
    fn records(&self) -> Result<Vec<Allocation>, IpamError>;

    /// The last address handed out from range set `set`.
    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError>;

    /// Moves the round-robin cursor of range set `set` (atomically; its
    /// durability does not matter).
    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError>;

    /// Makes every reservation and record change so far survive a power
    /// cut. (A process kill needs nothing: every change is atomic.)
    fn sync(&self) -> Result<(), IpamError>;

    /// Removes whatever an interrupted write left behind that is not state
    /// (temporary files). Never touches a reservation or a record.
    fn tidy(&self) -> Result<(), IpamError>;
}
