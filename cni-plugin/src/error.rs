//! Every way a weir invocation can fail, and the one place that turns a
//! failure into a CNI error code.

use std::path::PathBuf;

use serde::Serialize;

/// Plugin-specific code: the IPAM pool has no free address.
pub const CODE_EXHAUSTED: u32 = weir_ipam::EXHAUSTED_CODE;
/// Plugin-specific code: the attachment (container id, ifname) already exists.
pub const CODE_EXISTS: u32 = 101;
/// Plugin-specific code: CHECK found the attachment different from its result.
pub const CODE_CHECK_FAILED: u32 = 102;
/// The spec's code for "the plugin is not available" (STATUS).
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// Unexpected failure of the kernel or of a library (libcni's `ErrInternal`).
pub const CODE_INTERNAL: u32 = 999;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("CNI version {requested} is not supported (supported: {supported})")]
    IncompatibleVersion {
        requested: String,
        supported: String,
    },
    #[error("{verb} is not allowed for cniVersion {version} (needs {minimum} or later)")]
    VerbNotAllowed {
        verb: &'static str,
        version: String,
        minimum: &'static str,
    },
    #[error("unsupported field {field}={value}: {reason}")]
    UnsupportedField {
        field: String,
        value: String,
        reason: String,
    },
    #[error("container unknown: {reason}")]
    ContainerUnknown { reason: String },
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode the network configuration: {reason}")]
    Decode { reason: String },
    #[error("invalid network configuration: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    #[error("{0}")]
    Ipam(#[from] weir_ipam::IpamError),
    #[error("{0}")]
    Datapath(#[from] weir_datapath::Error),
    #[error("{0}")]
    NodeInfo(#[from] weir_datapath::node_info::NodeInfoError),
    #[error("{0}")]
    EndpointRecord(#[from] weir_datapath::endpoint_info::EndpointInfoError),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
    #[error("interface {host} already exists: {detail}")]
    AlreadyExists { host: String, detail: String },
    #[error("CHECK: {0}")]
    Check(String),
    #[error("not ready: {reason}")]
    NotAvailable { reason: String },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The CNI error code of this failure. This is the only place codes are
    /// chosen.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } | Error::VerbNotAllowed { .. } => 1,
            Error::UnsupportedField { .. } => 2,
            Error::ContainerUnknown { .. } => 3,
            Error::InvalidEnv { .. } => 4,
            Error::Io { .. } | Error::EndpointRecord(_) => 5,
            Error::Decode { .. } => 6,
            Error::InvalidConfig { .. } => 7,
            Error::NodeInfo(weir_datapath::node_info::NodeInfoError::Missing { .. }) => 11,
            Error::NodeInfo(_) => 5,
            Error::Ipam(e) if e.is_invalid_config() => 7,
            Error::Ipam(e) if e.is_exhausted() => CODE_EXHAUSTED,
            Error::Ipam(_) => 5,
            Error::Datapath(e) if e.is_not_loaded() => 11,
            Error::Datapath(weir_datapath::Error::AbiMismatch { .. }) => 11,
            Error::Datapath(weir_datapath::Error::Io { .. }) => 5,
            Error::Datapath(_) => CODE_INTERNAL,
            Error::Netns { .. } => 4,
            Error::AlreadyExists { .. } => CODE_EXISTS,
            Error::Check(_) => CODE_CHECK_FAILED,
            Error::NotAvailable { .. } => CODE_NOT_AVAILABLE,
            Error::Netlink { .. } | Error::Internal(_) => CODE_INTERNAL,
        }
    }

    /// Short name of the failure, the `details` of the CNI error.
    pub fn details(&self) -> String {
        let mut out = String::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let what = what.into();
        move |source| Error::Netlink { what, source }
    }

    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn env(var: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidEnv {
            var,
            reason: reason.into(),
        }
    }
}

/// The error object of the CNI protocol, written to stdout.
#[derive(Debug, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(cni_version: &str, e: &Error) -> CniError {
        CniError {
            cni_version: cni_version.to_owned(),
            code: e.code(),
            msg: e.to_string(),
            details: e.details(),
        }
    }
}
