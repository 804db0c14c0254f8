//! The on-disk [`Store`]: plain files an operator can read (layout and
//! crash-safety argument in `ipam/README.md`).
//!
//! ```text
//! <dir>/lock                     flock'ed around every operation
//! <dir>/ips/<ip>                 one per reserved address: {"containerId":..,"ifname":..}
//! <dir>/keys/<cid>+<ifname>.json one per key: the allocation, with labels
//! <dir>/last_reserved.<set>      the round-robin cursor of range set <set>
//! ```
//!
//! Every file appears under its final name complete: it is written and
//! fsync'ed under a temporary name (`.tmp`, hidden, one per directory, safe
//! because writers hold the exclusive lock), then linked (`ips/`, which
//! fails if the address is taken) or renamed (everything else) into place.
//! Directories changed by a link, rename or unlink are fsync'ed by
//! [`Store::sync`], which the allocator calls where order matters and
//! [`Store::locked`] calls before it lets go of the lock. The cursors'
//! directory is not: losing a cursor move to a power cut only moves where
//! the next search starts.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::de::DeserializeOwned;

use super::{LockMode, Store};
use crate::{Allocation, IpamError, Key};

const TMP: &str = ".tmp";
const LAST_RESERVED: &str = "last_reserved.";

/// State kept in one directory per network, e.g. `/var/lib/weir/ipam/weir`.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    ips: PathBuf,
    keys: PathBuf,
    lock: PathBuf,
    /// `ips/` or `keys/` changed since they were last fsync'ed.
    ips_dirty: AtomicBool,
    keys_dirty: AtomicBool,
}

impl DiskStore {
    /// Opens (creating if needed) the state in `dir`.
    pub fn open(dir: &Path) -> Result<DiskStore, IpamError> {
        let store = DiskStore {
            dir: dir.to_path_buf(),
            ips: dir.join("ips"),
            keys: dir.join("keys"),
            lock: dir.join("lock"),
            ips_dirty: AtomicBool::new(false),
            keys_dirty: AtomicBool::new(false),
        };
        for d in [&store.dir, &store.ips, &store.keys] {
            if !d.is_dir() {
                fs::create_dir_all(d).map_err(|e| IpamError::io(d, e))?;
                if let Some(parent) = d.parent() {
                    sync_dir(parent)?;
                }
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds the reservation of `ip`.
    pub fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.ips.join(ip.to_string())
    }

    /// The file that holds the record of `key`.
    pub fn record_path(&self, key: &Key) -> PathBuf {
        self.keys.join(format!("{}.json", key.file_stem()))
    }

    /// The file that holds the round-robin cursor of range set `set`.
    pub fn last_reserved_path(&self, set: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED}{set}"))
    }

    /// Writes `contents` to a fresh `<dir>/.tmp` and fsyncs it. A leftover
    /// `.tmp` may be a second link to a live file (a crash between link and
    /// unlink), so it is unlinked, never truncated.
    fn write_tmp(&self, dir: &Path, contents: &[u8]) -> Result<PathBuf, IpamError> {
        let tmp = dir.join(TMP);
        remove_if_present(&tmp)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| IpamError::io(&tmp, e))?;
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(|e| IpamError::io(&tmp, e))?;
        Ok(tmp)
    }

    /// Atomically replaces `path` (in `dir`) with `contents`.
    fn replace(&self, dir: &Path, path: &Path, contents: &[u8]) -> Result<(), IpamError> {
        let tmp = self.write_tmp(dir, contents)?;
        fs::rename(&tmp, path).map_err(|e| IpamError::io(path, e))
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<(String, PathBuf)>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| IpamError::io(dir, e))? {
            let entry = entry.map_err(|e| IpamError::io(dir, e))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(IpamError::corrupt(path, "file name is not UTF-8"));
            };
            if !name.starts_with('.') {
                out.push((name, path));
            }
        }
        out.sort();
        Ok(out)
    }
}

impl Store for DiskStore {
    fn locked<T>(
        &self,
        mode: LockMode,
        f: impl FnOnce() -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        let lock_err = |source: io::Error| IpamError::Lock {
            path: self.lock.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&self.lock)
            .map_err(lock_err)?;
        let arg = match mode {
            LockMode::Shared => FlockArg::LockShared,
            LockMode::Exclusive => FlockArg::LockExclusive,
        };
        let _guard = loop {
            match Flock::lock(file, arg) {
                Ok(guard) => break guard,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => return Err(lock_err(errno.into())),
            }
        };
        // Whatever f changed is durable before the next holder sees it.
        let out = f();
        let synced = self.sync();
        out.and_then(|v| synced.map(|()| v))
    }

    fn sync(&self) -> Result<(), IpamError> {
        for (dirty, dir) in [(&self.ips_dirty, &self.ips), (&self.keys_dirty, &self.keys)] {
            if dirty.swap(false, Ordering::SeqCst) {
                sync_dir(dir).inspect_err(|_| dirty.store(true, Ordering::SeqCst))?;
            }
        }
        Ok(())
    }

    fn reservation_path(&self, ip: IpAddr) -> PathBuf {
        self.ip_path(ip)
    }

    fn owner(&self, ip: IpAddr) -> Result<Option<Key>, IpamError> {
        let path = self.ip_path(ip);
        read_json::<Key>(&path)
    }

    fn is_reserved(&self, ip: IpAddr) -> Result<bool, IpamError> {
        let path = self.ip_path(ip);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IpamError::io(path, e)),
        }
    }

    fn reserve(&self, ip: IpAddr, key: &Key) -> Result<bool, IpamError> {
        let path = self.ip_path(ip);
        let tmp = self.write_tmp(&self.ips, &to_json(key, false))?;
        let linked = match fs::hard_link(&tmp, &path) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
            Err(e) => return Err(IpamError::io(path, e)),
        };
        if linked {
            self.ips_dirty.store(true, Ordering::SeqCst);
        }
        remove_if_present(&tmp)?;
        Ok(linked)
    }

    fn unreserve(&self, ip: IpAddr) -> Result<(), IpamError> {
        self.ips_dirty.store(true, Ordering::SeqCst);
        remove_if_present(&self.ip_path(ip))
    }

    fn reserved(&self) -> Result<Vec<IpAddr>, IpamError> {
        let mut out = Vec::new();
        for (name, path) in self.list_dir(&self.ips)? {
            match name.parse::<IpAddr>() {
                // A non-canonical name ("10.0.0.05", "fd00:0::1") would escape
                // the existence check of its address: refuse it.
                Ok(ip) if ip.to_string() == name => out.push(ip),
                _ => {
                    return Err(IpamError::corrupt(
                        path,
                        "not a reservation: the name is not an IP address in canonical form",
                    ));
                }
            }
        }
        Ok(out)
    }

    fn record(&self, key: &Key) -> Result<Option<Allocation>, IpamError> {
        let path = self.record_path(key);
        let record = read_json::<Allocation>(&path)?;
        if let Some(r) = &record
            && &r.key != key
        {
            return Err(IpamError::corrupt(
                path,
                format!("holds the record of {} instead", r.key),
            ));
        }
        Ok(record)
    }

    fn put_record(&self, a: &Allocation) -> Result<(), IpamError> {
        self.keys_dirty.store(true, Ordering::SeqCst);
        self.replace(&self.keys, &self.record_path(&a.key), &to_json(a, true))
    }

    fn remove_record(&self, key: &Key) -> Result<(), IpamError> {
        self.keys_dirty.store(true, Ordering::SeqCst);
        remove_if_present(&self.record_path(key))
    }

    fn records(&self) -> Result<Vec<Allocation>, IpamError> {
        let mut out = Vec::new();
        for (name, path) in self.list_dir(&self.keys)? {
            let Some(stem) = name.strip_suffix(".json") else {
                return Err(IpamError::corrupt(
                    path,
                    "not a record: the name does not end in .json",
                ));
            };
            let Some(record) = read_json::<Allocation>(&path)? else {
                continue;
            };
            if record.key.file_stem() != stem {
                return Err(IpamError::corrupt(
                    path,
                    format!(
                        "holds the record of {}, which belongs in another file",
                        record.key
                    ),
                ));
            }
            out.push(record);
        }
        Ok(out)
    }

    fn last_reserved(&self, set: usize) -> Result<Option<IpAddr>, IpamError> {
        let path = self.last_reserved_path(set);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return Err(IpamError::corrupt(path, "not UTF-8 text"));
            }
            Err(e) => return Err(IpamError::io(path, e)),
        };
        match text.trim().parse() {
            Ok(ip) => Ok(Some(ip)),
            Err(_) => Err(IpamError::corrupt(
                path,
                format!("{:?} is not an IP address", text.trim()),
            )),
        }
    }

    fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        self.replace(
            &self.dir,
            &self.last_reserved_path(set),
            format!("{ip}\n").as_bytes(),
        )
    }

    fn tidy(&self) -> Result<(), IpamError> {
        for dir in [&self.dir, &self.ips, &self.keys] {
            remove_if_present(&dir.join(TMP))?;
        }
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let mut out = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    }
    .expect("state types serialise");
    out.push(b'\n');
    out
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, IpamError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IpamError::io(path, e)),
    };
    if bytes.is_empty() {
        return Err(IpamError::corrupt(path, "empty file"));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| IpamError::corrupt(path, format!("unreadable JSON: {e}")))
}

fn remove_if_present(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IpamError::io(path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), IpamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IpamError::io(dir, e))
}
