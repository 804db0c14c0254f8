//! The node set: what every source produces and the reconciler consumes.
//!
//! A source turns Kubernetes `Node` objects (from the API server or from a
//! directory of YAML manifests) into [`NodeSpec`]s; [`desired_remotes`] turns
//! the set into the remote pod CIDR → node IP table that both the `NODES` map
//! and the node routes are made from.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use serde::Serialize;

/// One node as weir needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    pub name: String,
    /// `spec.podCIDRs` (or the older `spec.podCIDR`), normalised to their
    /// network address.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNetwork>,
    /// The `InternalIP` addresses of `status.addresses`, in order.
    #[serde(rename = "internalIPs")]
    pub internal_ips: Vec<IpAddr>,
}

/// Every node, by name.
pub type NodeSet = BTreeMap<String, NodeSpec>;

/// Why a `Node` object could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("a Node has no metadata.name")]
    Unnamed,
    #[error("node {node}: pod CIDR {value:?} is not a CIDR")]
    BadCidr { node: String, value: String },
    #[error("node {node}: address {value:?} is not an IP address")]
    BadAddress { node: String, value: String },
}

/// Problems reading a manifest directory.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: document {index} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{path}: document {index} is not a valid Node: {source}")]
    Node {
        path: PathBuf,
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: NodeError,
    },
    #[error("node {name} is defined in both {first} and {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

impl NodeSpec {
    /// Takes what weir needs from a Kubernetes `Node`.
    pub fn from_node(node: &Node) -> Result<NodeSpec, NodeError> {
        let name = node.metadata.name.clone().ok_or(NodeError::Unnamed)?;
        let spec = node.spec.as_ref();
        let raw_cidrs: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()) {
            Some(cidrs) if !cidrs.is_empty() => cidrs,
            _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
        };
        let mut pod_cidrs = Vec::new();
        for value in raw_cidrs {
            let net: IpNetwork = value.parse().map_err(|_| NodeError::BadCidr {
                node: name.clone(),
                value: value.clone(),
            })?;
            let net =
                IpNetwork::new(net.network(), net.prefix()).map_err(|_| NodeError::BadCidr {
                    node: name.clone(),
                    value: value.clone(),
                })?;
            pod_cidrs.push(net);
        }
        let mut internal_ips = Vec::new();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for addr in addresses.iter().filter(|a| a.type_ == "InternalIP") {
            let ip: IpAddr = addr.address.parse().map_err(|_| NodeError::BadAddress {
                node: name.clone(),
                value: addr.address.clone(),
            })?;
            internal_ips.push(ip);
        }
        Ok(NodeSpec {
            name,
            pod_cidrs,
            internal_ips,
        })
    }

    /// The node's address of the family of `net`, the next hop towards it.
    pub fn next_hop_for(&self, net: &IpNetwork) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == net.is_ipv4())
    }
}

/// The remote pod CIDRs seen from `self_name`, each with the address of the
/// node that owns it. Nodes without an address of the CIDR's family are
/// skipped (and reported), as are CIDRs that overlap this node's own.
pub fn desired_remotes(
    set: &NodeSet,
    self_name: &str,
) -> (BTreeMap<IpNetwork, IpAddr>, Vec<String>) {
    let own: Vec<IpNetwork> = set
        .get(self_name)
        .map(|n| n.pod_cidrs.clone())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for node in set.values().filter(|n| n.name != self_name) {
        for net in &node.pod_cidrs {
            if own.iter().any(|o| overlaps(o, net)) {
                problems.push(format!(
                    "node {}: pod CIDR {net} overlaps this node's own",
                    node.name
                ));
                continue;
            }
            let Some(hop) = node.next_hop_for(net) else {
                problems.push(format!(
                    "node {}: no InternalIP of the family of {net}",
                    node.name
                ));
                continue;
            };
            if let Some(previous) = out.insert(*net, hop)
                && previous != hop
            {
                problems.push(format!(
                    "pod CIDR {net} is claimed by more than one node ({previous} and {hop})"
                ));
            }
        }
    }
    (out, problems)
}

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// Parses every document of a YAML (or JSON) stream. Documents that are not
/// `Node`s (or lists of them) are ignored, so the directory can hold other
/// kinds for other sources.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<NodeSpec>, ManifestError> {
    let mut out = Vec::new();
    for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value =
            <serde_json::Value as serde::Deserialize>::deserialize(doc).map_err(|source| {
                ManifestError::Yaml {
                    path: path.to_owned(),
                    index,
                    source,
                }
            })?;
        collect_nodes(path, index, value, &mut out)?;
    }
    Ok(out)
}

fn collect_nodes(
    path: &Path,
    index: usize,
    value: serde_json::Value,
    out: &mut Vec<NodeSpec>,
) -> Result<(), ManifestError> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    match kind {
        "Node" => {
            let node: Node =
                serde_json::from_value(value).map_err(|source| ManifestError::Node {
                    path: path.to_owned(),
                    index,
                    source,
                })?;
            let spec = NodeSpec::from_node(&node).map_err(|source| ManifestError::Invalid {
                path: path.to_owned(),
                source,
            })?;
            out.push(spec);
        }
        "NodeList" | "List" => {
            if let Some(serde_json::Value::Array(items)) = value.get("items").cloned() {
                for item in items {
                    collect_nodes(path, index, item, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Builds the node set from manifest files (name, content), refusing a node
/// defined twice.
pub fn node_set_from_files(files: &[(PathBuf, String)]) -> Result<NodeSet, ManifestError> {
    let mut set = NodeSet::new();
    let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (path, text) in files {
        for spec in parse_manifest(path, text)? {
            if let Some(first) = origin.get(&spec.name) {
                return Err(ManifestError::Duplicate {
                    name: spec.name,
                    first: first.clone(),
                    second: path.clone(),
                });
            }
            origin.insert(spec.name.clone(), path.clone());
            set.insert(spec.name.clone(), spec);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_NODES: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
spec:
  podCIDRs: ["10.244.0.0/24", "fd00:244::/64"]
status:
  addresses:
  - type: Hostname
    address: node-a
  - type: InternalIP
    address: 192.0.2.10
  - type: InternalIP
    address: 2001:db8::10
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
spec:
  podCIDR: 10.244.1.7/24
status:
  addresses:
  - type: InternalIP
    address: 192.0.2.11
---
apiVersion: v1
kind: Service
metadata:
  name: ignored
---
"#;

    fn spec(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn multi_document_yaml_yields_nodes_and_skips_other_kinds() {
        let nodes = parse_manifest(Path::new("n.yaml"), TWO_NODES).unwrap();
        assert_eq!(
            nodes,
            vec![
                spec(
                    "node-a",
                    &["10.244.0.0/24", "fd00:244::/64"],
                    &["192.0.2.10", "2001:db8::10"]
                ),
                // The legacy field is used, and the CIDR is normalised.
                spec("node-b", &["10.244.1.0/24"], &["192.0.2.11"]),
            ]
        );
    }

    #[test]
    fn node_lists_are_expanded() {
        let text = r#"{"kind":"NodeList","apiVersion":"v1","items":[
            {"kind":"Node","apiVersion":"v1","metadata":{"name":"x"},
             "spec":{"podCIDRs":["10.1.0.0/16"]}}]}"#;
        let nodes = parse_manifest(Path::new("l.json"), text).unwrap();
        assert_eq!(nodes, vec![spec("x", &["10.1.0.0/16"], &[])]);
    }

    #[test]
    fn bad_documents_are_errors_naming_the_file() {
        let bad_cidr = "kind: Node\nmetadata: {name: n}\nspec: {podCIDRs: [nope]}\n";
        let err = parse_manifest(Path::new("bad.yaml"), bad_cidr).unwrap_err();
        assert!(err.to_string().contains("bad.yaml"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");

        let unnamed = "kind: Node\nspec: {podCIDRs: [10.0.0.0/24]}\n";
        assert!(matches!(
            parse_manifest(Path::new("u.yaml"), unnamed),
            Err(ManifestError::Invalid {
                source: NodeError::Unnamed,
                ..
            })
        ));

        let broken = "kind: Node\nmetadata: {name: [\n";
        assert!(matches!(
            parse_manifest(Path::new("b.yaml"), broken),
            Err(ManifestError::Yaml { .. })
        ));

        let bad_ip = "kind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: x}]}\n";
        assert!(matches!(
            parse_manifest(Path::new("i.yaml"), bad_ip),
            Err(ManifestError::Invalid {
                source: NodeError::BadAddress { .. },
                ..
            })
        ));
    }

    #[test]
    fn a_node_defined_twice_is_refused() {
        let one = "kind: Node\nmetadata: {name: n}\n".to_string();
        let files = vec![
            (PathBuf::from("a.yaml"), one.clone()),
            (PathBuf::from("b.yaml"), one),
        ];
        assert!(matches!(
            node_set_from_files(&files),
            Err(ManifestError::Duplicate { .. })
        ));
    }

    #[test]
    fn remotes_exclude_self_and_pick_the_family_of_each_cidr() {
        let mut set = NodeSet::new();
        for n in [
            spec("a", &["10.244.0.0/24"], &["192.0.2.10"]),
            spec(
                "b",
                &["10.244.1.0/24", "fd00:244:1::/64"],
                &["2001:db8::11", "192.0.2.11"],
            ),
            spec("c", &["10.244.2.0/24"], &[]),
            spec("d", &["10.244.0.0/25"], &["192.0.2.13"]),
        ] {
            set.insert(n.name.clone(), n);
        }
        let (remotes, problems) = desired_remotes(&set, "a");
        let expect: BTreeMap<IpNetwork, IpAddr> = [
            ("10.244.1.0/24", "192.0.2.11"),
            ("fd00:244:1::/64", "2001:db8::11"),
        ]
        .iter()
        .map(|(n, ip)| (n.parse().unwrap(), ip.parse().unwrap()))
        .collect();
        assert_eq!(remotes, expect);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("node c")));
        assert!(problems.iter().any(|p| p.contains("node d")));
    }
}
