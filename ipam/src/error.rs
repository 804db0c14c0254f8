//! The one error type of the crate. The CNI layer maps it to protocol codes
//! with [`IpamError::is_invalid_config`], [`IpamError::is_exhausted`] and
//! [`crate::EXHAUSTED_CODE`].

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while validating a pool or touching state.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A range in the configuration cannot be used. `field` is the JSON path
    /// of the offending value, e.g. `ipam.ranges[0][1].rangeStart`.
    #[error("invalid IPAM range {field}: {reason}")]
    InvalidRange { field: String, reason: String },

    /// The (container id, ifname) pair cannot name an allocation.
    #[error("invalid allocation key (container id {container_id:?}, ifname {ifname:?}): {reason}")]
    InvalidKey {
        container_id: String,
        ifname: String,
        reason: String,
    },

    /// Every address of a range set is held.
    #[error("no free address in range set {set}: {allocated} of {capacity} allocated")]
    Exhausted {
        set: String,
        allocated: u128,
        capacity: u128,
    },

    /// A state file exists but does not hold what it must.
    #[error("corrupt IPAM state file {}: {reason}", path.display())]
    CorruptState { path: PathBuf, reason: String },

    /// A state file or directory could not be read or written.
    #[error("IPAM state {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The state lock could not be taken.
    #[error("cannot lock IPAM state {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl IpamError {
    /// The configuration is wrong (CNI error 7, "invalid network config").
    pub fn is_invalid_config(&self) -> bool {
        matches!(self, IpamError::InvalidRange { .. })
    }

    /// The pool has no free address ([`crate::EXHAUSTED_CODE`]).
    pub fn is_exhausted(&self) -> bool {
        matches!(self, IpamError::Exhausted { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> IpamError {
        IpamError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> IpamError {
        IpamError::CorruptState {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
