//! The network configuration's `ipam` object, as the CNI hands it over.
//! Nothing here is validated: [`crate::Pool::from_config`] does that.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// One range: a subnet and, optionally, the part of it to allocate from and
/// the gateway to leave out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConfig {
    /// A CIDR with no host bits set, e.g. `10.244.1.0/24`.
    pub subnet: String,
    /// First address to hand out (default: the one after the network address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    /// Last address to hand out (default: the one before the IPv4 broadcast
    /// address, or the last address of an IPv6 subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    /// Never handed out; reported with every address of this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

/// The CNI config's `ipam` object: `{"ranges": [[RangeConfig, ...], ...]}`.
///
/// Each inner list is a range set; an attachment gets exactly one address
/// from every set (one set per family for dual-stack).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfig {
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConfig>>,
}
