//! Mounting and checking bpffs.

use std::path::Path;

use nix::mount::{MsFlags, mount};

use crate::{Error, Result};

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => st.filesystem_type().0 == BPF_FS_MAGIC,
        Err(_) => false,
    }
}

/// Makes sure `mountpoint` is a bpffs, mounting one there when it is not.
pub fn ensure_mounted(mountpoint: &Path) -> Result<()> {
    if is_bpffs(mountpoint) {
        return Ok(());
    }
    std::fs::create_dir_all(mountpoint).map_err(Error::io(mountpoint))?;
    mount(
        Some("bpf"),
        mountpoint,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|source| Error::BpffsMount {
        path: mountpoint.to_owned(),
        source,
    })
}

/// Checks that the directory `root` (or its nearest existing ancestor) is on
/// bpffs, without mounting anything.
pub fn check_on_bpffs(root: &Path) -> Result<()> {
    let mut p = root;
    loop {
        if p.exists() {
            return if is_bpffs(p) {
                Ok(())
            } else {
                Err(Error::BpffsMissing { path: p.to_owned() })
            };
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => {
                return Err(Error::BpffsMissing {
                    path: root.to_owned(),
                });
            }
        }
    }
}
