//! Network namespaces: opening CNI_NETNS, and running work inside one on a
//! dedicated OS thread whose original namespace a guard restores.
//!
//! `setns` changes the namespace of the calling thread only, so it must never
//! run on a thread that other work shares (an async worker): that work would
//! silently move to the pod's namespace. A netlink socket opened inside a
//! namespace stays bound to it wherever it is used afterwards, so the thread
//! only opens sockets (and writes sysctls), and the async code uses them.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

use crate::error::{Error, Result};

/// `NSFS_MAGIC` from linux/magic.h.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace file.
#[derive(Debug)]
pub struct NetNs {
    pub path: PathBuf,
    pub file: File,
}

impl NetNs {
    /// Opens CNI_NETNS. A path that does not exist is an unknown container
    /// (code 3); a path that is not a network namespace is an invalid
    /// CNI_NETNS (code 4).
    pub fn open(path: &Path) -> Result<NetNs> {
        let file = File::open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::ContainerUnknown {
                    reason: format!("network namespace {} does not exist", path.display()),
                }
            } else {
                Error::Netns {
                    path: path.into(),
                    reason: e.to_string(),
                }
            }
        })?;
        let not_netns = |reason: &str| Error::Netns {
            path: path.into(),
            reason: reason.into(),
        };
        let st = nix::sys::statfs::fstatfs(&file).map_err(|e| not_netns(&e.to_string()))?;
        if st.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(not_netns("is not a namespace file"));
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(not_netns("is not a network namespace"));
        }
        Ok(NetNs {
            path: path.into(),
            file,
        })
    }
}

/// Restores the thread's original network namespace when dropped.
struct RestoreGuard {
    original: File,
}

impl Drop for RestoreGuard {
    fn drop(&mut self) {
        if setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            // A thread stuck in the wrong namespace must not run anything
            // else; this one only ever runs the closure, so end the process
            // rather than go on.
            std::process::abort();
        }
    }
}

/// Runs `f` inside `ns` on a new OS thread, which enters the namespace and
/// restores its original one before ending.
pub fn run_in<T: Send>(ns: &NetNs, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let target = ns.file.as_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            let original = File::open("/proc/thread-self/ns/net")
                .map_err(Error::io("/proc/thread-self/ns/net"))?;
            setns(target, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
                path: ns.path.clone(),
                reason: format!("entering it: {e}"),
            })?;
            let _guard = RestoreGuard { original };
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Internal("namespace thread panicked".into())))
    })
}

/// Opens a NETLINK_ROUTE socket inside `ns`.
pub fn route_socket_in(ns: &NetNs) -> Result<OwnedFd> {
    run_in(ns, route_socket)
}

/// Opens a NETLINK_ROUTE socket in the calling thread's namespace.
pub fn route_socket() -> Result<OwnedFd> {
    let sock = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
        .map_err(Error::io("netlink socket"))?;
    // SAFETY: into_raw_fd hands over ownership of an open socket.
    Ok(unsafe { OwnedFd::from_raw_fd(sock.into_raw_fd()) })
}
