//! `/run/weir/node.json`: what weir-node tells the CNI binary about this node.
//! weir-node writes it (atomically: temp file, fsync, rename); the CNI reads
//! it on every ADD and STATUS.

use std::{
    fs,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Default location of the file.
pub const DEFAULT_PATH: &str = "/run/weir/node.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInfo {
    /// The datapath ABI version of the pins weir-node created.
    pub abi_version: u32,
    /// The Kubernetes node name.
    pub node_name: String,
    /// This node's pod CIDRs (one per family at most).
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
    /// This node's addresses on the underlay.
    #[serde(rename = "nodeIPs")]
    pub node_ips: Vec<IpAddr>,
    /// MTU for pod interfaces.
    pub mtu: u32,
    /// bpffs directory of the pins.
    pub pin_root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeInfoError {
    #[error("{path} is missing: is weir-node running on this node?")]
    Missing { path: PathBuf },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid node info: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl NodeInfo {
    pub fn read(path: &Path) -> Result<NodeInfo, NodeInfoError> {
        let bytes = fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                NodeInfoError::Missing { path: path.into() }
            } else {
                NodeInfoError::Read {
                    path: path.into(),
                    source,
                }
            }
        })?;
        let info: NodeInfo =
            serde_json::from_slice(&bytes).map_err(|source| NodeInfoError::Parse {
                path: path.into(),
                source,
            })?;
        info.validate().map_err(|reason| NodeInfoError::Invalid {
            path: path.into(),
            reason,
        })?;
        Ok(info)
    }

    /// Checks what the CNI relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.mtu < 576 || self.mtu > 65_535 {
            return Err(format!("mtu {} is outside 576..=65535", self.mtu));
        }
        let v4 = self.pod_cidrs.iter().filter(|c| c.is_ipv4()).count();
        let v6 = self.pod_cidrs.iter().filter(|c| c.is_ipv6()).count();
        if v4 > 1 || v6 > 1 {
            return Err("podCIDRs holds more than one CIDR of a family".into());
        }
        Ok(())
    }

    /// Writes the file atomically: a reader sees the old or the new content,
    /// never a torn one.
    pub fn write(&self, path: &Path) -> Result<(), NodeInfoError> {
        let err = |source| NodeInfoError::Write {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let mut body = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        body.push(b'\n');
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeInfo {
        NodeInfo {
            abi_version: weir_common::ABI_VERSION,
            node_name: "node-a".into(),
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ],
            node_ips: vec!["192.0.2.10".parse().unwrap()],
            mtu: 1500,
            pin_root: "/sys/fs/bpf/weir".into(),
        }
    }

    #[test]
    fn round_trips_through_the_file_with_kubernetes_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        sample().write(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"podCIDRs\"") && text.contains("\"nodeIPs\""),
            "{text}"
        );
        assert_eq!(NodeInfo::read(&path).unwrap(), sample());
    }

    #[test]
    fn missing_garbage_and_invalid_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert!(matches!(
            NodeInfo::read(&path),
            Err(NodeInfoError::Missing { .. })
        ));
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            NodeInfo::read(&path),
            Err(NodeInfoError::Parse { .. })
        ));
        let mut bad = sample();
        bad.mtu = 10;
        bad.write(&path).unwrap();
        let err = NodeInfo::read(&path).unwrap_err();
        assert!(err.to_string().contains("mtu 10"), "{err}");
    }
}
