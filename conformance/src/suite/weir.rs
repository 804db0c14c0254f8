//! What weir needs before its first ADD, done the way the end-to-end tests
//! do it ([`crate::node::TestNode`]) but inside the run: the datapath loaded
//! into a pin root of the run's own, and a node.json naming it. Both go when
//! the run ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use weir_datapath::{PinLayout, bpffs, loader, node_info::NodeInfo, object};

/// The pod CIDRs of the suite's weir node unless `--pod-cidrs` says
/// otherwise.
pub const DEFAULT_POD_CIDRS: [&str; 2] = ["10.78.0.0/24", "fd00:78::/64"];

pub struct WeirNode {
    layout: PinLayout,
    node_info: PathBuf,
}

impl WeirNode {
    /// Loads the datapath into `/sys/fs/bpf/cc-<id>` and writes
    /// `<run_dir>/node.json`.
    pub fn new(id: &str, run_dir: &Path, pod_cidrs: &[IpNetwork]) -> Result<WeirNode> {
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).context("bpffs at /sys/fs/bpf")?;
        let node = WeirNode {
            layout: PinLayout::new(format!("/sys/fs/bpf/cc-{id}")),
            node_info: run_dir.join("node.json"),
        };
        loader::load(&node.layout, object::OBJECT).context("load the datapath")?;
        NodeInfo {
            abi_version: weir_common::ABI_VERSION,
            node_name: format!("cc-{id}"),
            pod_cidrs: pod_cidrs.to_vec(),
            node_ips: vec!["192.0.2.10".parse()?],
            mtu: 1500,
            pin_root: node.layout.root().to_owned(),
        }
        .write(&node.node_info)
        .context("write node.json")?;
        Ok(node)
    }

    pub fn pin_root(&self) -> &Path {
        self.layout.root()
    }

    pub fn node_info(&self) -> &Path {
        &self.node_info
    }
}

impl Drop for WeirNode {
    fn drop(&mut self) {
        let _ = loader::unpin_all(&self.layout);
    }
}
