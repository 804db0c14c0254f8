//! A test node: a network namespace standing for the node, the datapath
//! loaded into a pin directory of its own, and its own node.json, IPAM state,
//! endpoint records and log. Pods are namespaces wired by the real `weir`
//! binary run inside the node's namespace. [`TestNode::leftovers`] lists
//! whatever weir left behind.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use serde_json::{Value, json};
use weir_datapath::{
    PinLayout, attach, bpffs, endpoint_info::EndpointInfo, loader, maps::EndpointMap,
    node_info::NodeInfo, object,
};

use crate::{
    cni::{self, Invocation, Outcome},
    netns::NetNs,
    random_hex,
};

/// Options of a test node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub pod_cidrs: Vec<IpNetwork>,
    pub mtu: u32,
    /// Load the datapath into the pin directory.
    pub load_datapath: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            pod_cidrs: vec![
                "10.77.0.0/24".parse().expect("cidr"),
                "fd00:77::/64".parse().expect("cidr"),
            ],
            mtu: 1500,
            load_datapath: true,
        }
    }
}

pub struct TestNode {
    /// The random prefix of everything this node owns.
    pub id: String,
    pub netns: NetNs,
    pub layout: PinLayout,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub options: NodeOptions,
}

impl TestNode {
    pub fn new(options: NodeOptions) -> Result<TestNode> {
        let id = random_hex(8);
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).context("bpffs at /sys/fs/bpf")?;
        let layout = PinLayout::new(format!("/sys/fs/bpf/weir-test-{id}"));
        let dir = std::env::temp_dir().join(format!("weir-test-{id}"));
        fs::create_dir_all(&dir)?;
        let netns = NetNs::new(&format!("wt{id}n"))?;
        let node = TestNode {
            id,
            netns,
            layout,
            dir,
            bin: cni::weir_bin(),
            options,
        };
        if node.options.load_datapath {
            node.load_datapath()?;
        }
        NodeInfo {
            abi_version: weir_common::ABI_VERSION,
            node_name: format!("node-{}", node.id),
            pod_cidrs: node.options.pod_cidrs.clone(),
            node_ips: vec!["192.0.2.10".parse()?],
            mtu: node.options.mtu,
            pin_root: node.layout.root().to_owned(),
        }
        .write(&node.node_info_path())?;
        Ok(node)
    }

    pub fn load_datapath(&self) -> Result<()> {
        loader::load(&self.layout, object::OBJECT).context("load the datapath")?;
        Ok(())
    }

    pub fn node_info_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }
    pub fn endpoints_dir(&self) -> PathBuf {
        self.dir.join("endpoints")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("cni.log")
    }

    /// A weir config in `version` with every path inside this node.
    pub fn config(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "weirnet",
            "type": "weir",
            "pinRoot": self.layout.root(),
            "nodeInfo": self.node_info_path(),
            "ipamStateDir": self.ipam_dir(),
            "endpointsDir": self.endpoints_dir(),
            "logFile": self.log_file(),
            "logLevel": "debug",
        })
    }

    /// A fresh pod namespace owned by the caller.
    pub fn pod_netns(&self, tag: &str) -> Result<NetNs> {
        NetNs::new(&format!("wt{}{tag}", self.id))
    }

    /// A container id unique to this node.
    pub fn container_id(&self, tag: &str) -> String {
        format!("{}-{tag}", self.id)
    }

    /// Runs weir inside the node's namespace.
    pub fn weir(&self, inv: &Invocation) -> Result<Outcome> {
        cni::invoke(&self.bin, inv, Some(&self.netns))
    }

    pub fn weir_raw(&self, inv: &Invocation, stdin: &[u8]) -> Result<Outcome> {
        cni::invoke_raw(&self.bin, inv, stdin, Some(&self.netns))
    }

    /// The IPAM state of the network, opened against the node's pod CIDRs.
    pub fn ipam(&self) -> Result<weir_ipam::Ipam> {
        let pool = weir_ipam::Pool::from_cidrs(&self.options.pod_cidrs)?;
        Ok(weir_ipam::Ipam::open(
            &self.ipam_dir().join("weirnet"),
            pool,
        )?)
    }

    /// Everything weir may have left: host veths, link pins, endpoint
    /// entries, endpoint records, reservations. Empty means clean.
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for l in self.netns.link_names()? {
            if l != "lo" {
                out.push(format!("link {l}"));
            }
        }
        if self.layout.root().exists() {
            for i in attach::linked_interfaces(&self.layout)? {
                out.push(format!("link pins of {i}"));
            }
        }
        if self.layout.is_loaded() {
            for (ip, ep) in EndpointMap::open(&self.layout)?.list()? {
                out.push(format!("endpoint entry {ip} -> ifindex {}", ep.ifindex));
            }
        }
        let (records, bad) = EndpointInfo::list(&self.endpoints_dir());
        for r in records {
            out.push(format!("endpoint record {}", r.host_ifname));
        }
        for b in bad {
            out.push(format!("bad endpoint record {b}"));
        }
        if self.ipam_dir().join("weirnet").exists() {
            for a in self.ipam()?.list()? {
                out.push(format!("reservation {} {:?}", a.key, a.ips));
            }
        }
        Ok(out)
    }

    /// GC with the given valid attachments.
    pub fn gc(&self, valid: &[(&str, &str)]) -> Result<Outcome> {
        let conf = cni::gc_config(&self.config("1.1.0"), valid);
        self.weir(&Invocation::new("GC", "", "", "", conf))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = loader::unpin_all(&self.layout);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
