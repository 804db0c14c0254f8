//! The CNI result: one internal form, read from any supported version (a
//! `prevResult`) and written in the version the config asks for.
//!
//! - 0.3.0, 0.3.1, 0.4.0: each IP carries `"version": "4"|"6"`.
//! - 1.0.0: no `version` on IPs.
//! - 1.1.0: interfaces may carry `mtu`, `socketPath`, `pciID`; routes may
//!   carry `mtu`, `advmss`, `priority`, `table`, `scope`. Older versions never
//!   see these fields.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::Version;

/// The `dns` object, of the config and of the result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Fields this plugin does not interpret (`mtu`, `socketPath`, `pciID`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// The 1.1.0 route fields, kept as given.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

const INTERFACE_FIELDS_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_FIELDS_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

#[derive(Deserialize)]
struct AnyIp {
    #[serde(default)]
    version: Option<String>,
    address: IpNetwork,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct AnyResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<AnyIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// Reads a result of any supported version (a `prevResult`).
    pub fn from_json(v: Value) -> Result<CniResult, String> {
        let any: AnyResult = serde_json::from_value(v).map_err(|e| e.to_string())?;
        let mut ips = Vec::with_capacity(any.ips.len());
        for ip in any.ips {
            let expected = if ip.address.is_ipv4() { "4" } else { "6" };
            if let Some(v) = &ip.version
                && v != expected
            {
                return Err(format!(
                    "ips: {} has version {v:?}, expected {expected:?}",
                    ip.address
                ));
            }
            if let Some(i) = ip.interface
                && i >= any.interfaces.len()
            {
                return Err(format!(
                    "ips: {} names interface {i}, but there are {}",
                    ip.address,
                    any.interfaces.len()
                ));
            }
            ips.push(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            });
        }
        Ok(CniResult {
            interfaces: any.interfaces,
            ips,
            routes: any.routes,
            dns: any.dns.unwrap_or_default(),
        })
    }

    /// Appends `other` (this plugin's part) after `self` (a prevResult),
    /// shifting its interface indexes.
    pub fn merge(mut self, other: CniResult) -> CniResult {
        let shift = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + shift);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }

    /// The result as `version` spells it.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if version < Version::V1_1_0 {
                    for f in INTERFACE_FIELDS_1_1 {
                        i.extra.remove(f);
                    }
                }
                serde_json::to_value(i).unwrap_or(Value::Null)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).unwrap_or(Value::Null);
                if version < Version::V1_0_0
                    && let Value::Object(m) = &mut v
                {
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), json!(family));
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if version < Version::V1_1_0 {
                    for f in ROUTE_FIELDS_1_1 {
                        r.extra.remove(f);
                    }
                }
                serde_json::to_value(r).unwrap_or(Value::Null)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert(
            "dns".into(),
            serde_json::to_value(&self.dns).unwrap_or_default(),
        );
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        let mut extra = Map::new();
        extra.insert("mtu".into(), json!(1450));
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                sandbox: Some("/run/netns/x".into()),
                extra,
            }],
            ips: vec![
                IpConfig {
                    address: "10.0.0.2/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::2/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_versions_and_no_1_1_fields() {
        let v = sample().to_json(Version::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(Version::V1_1_0);
        assert_eq!(v["interfaces"][0]["mtu"], 1450);
    }

    #[test]
    fn every_version_reads_back() {
        for version in [Version::V0_3_0, Version::V0_4_0, Version::V1_0_0] {
            let back = CniResult::from_json(sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips);
        }
        let bad = json!({"ips": [{"address": "10.0.0.2/32", "version": "6"}]});
        assert!(CniResult::from_json(bad).is_err());
        let bad = json!({"ips": [{"address": "10.0.0.2/32", "interface": 3}]});
        assert!(CniResult::from_json(bad).is_err());
    }

    #[test]
    fn merge_shifts_interface_indexes() {
        let merged = sample().merge(sample());
        assert_eq!(merged.interfaces.len(), 2);
        assert_eq!(merged.ips[2].interface, Some(1));
    }
}
