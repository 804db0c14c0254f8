//! What the verbs share: the node info, the address pool, the runtime, the
//! pod's gateway addresses, and the test-only step delay.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::OnceLock,
    time::Duration,
};

use weir_datapath::{PinLayout, node_info::NodeInfo};
use weir_ipam::{Ipam, Key, Pool};

use crate::{
    config::{Env, NetConf},
    error::{Error, Result},
    names,
};

/// The pod's IPv4 gateway: link-local, answered by a permanent neighbour
/// entry for the host veth's MAC.
pub const GATEWAY_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
/// The pod's IPv6 gateway.
pub const GATEWAY_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));

pub fn gateway_for(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() { GATEWAY_V4 } else { GATEWAY_V6 }
}

/// Everything that names one attachment.
pub struct Attachment {
    pub key: Key,
    pub host_ifname: String,
}

impl Attachment {
    pub fn new(container_id: &str, ifname: &str) -> Attachment {
        Attachment {
            key: Key {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
            },
            host_ifname: names::host_ifname(container_id, ifname),
        }
    }

    pub fn of(env: &Env) -> Attachment {
        Attachment::new(&env.container_id, &env.ifname)
    }
}

pub fn layout(conf: &NetConf) -> PinLayout {
    PinLayout::new(&conf.pin_root)
}

pub fn node_info(conf: &NetConf) -> Result<NodeInfo> {
    Ok(NodeInfo::read(&conf.node_info)?)
}

/// The pool: the config's ranges, or the node's pod CIDRs.
pub fn pool(conf: &NetConf, node: Option<&NodeInfo>) -> Result<Pool> {
    match (&conf.ranges, node) {
        (Some(r), _) => Ok(Pool::from_config(r)?),
        (None, Some(n)) => Ok(Pool::from_cidrs(&n.pod_cidrs)?),
        (None, None) => Ok(Pool::from_cidrs(&node_info(conf)?.pod_cidrs)?),
    }
}

pub fn ipam_dir(conf: &NetConf) -> PathBuf {
    conf.ipam_state_dir.join(&conf.name)
}

pub fn open_ipam(conf: &NetConf, pool: Pool) -> Result<Ipam> {
    Ok(Ipam::open(&ipam_dir(conf), pool)?)
}

/// A current-thread runtime for the netlink work of one invocation.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| Error::Internal(format!("starting the runtime: {e}")))
}

/// Test hook: `WEIR_TEST_STEP_DELAY_US` makes ADD pause that long after each
/// step, so that tests can kill it at chosen points. Unset, it costs one
/// environment lookup per invocation.
pub fn step_pause(step: &'static str) {
    crate::log::mark(step);
    static DELAY: OnceLock<Option<Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("WEIR_TEST_STEP_DELAY_US")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|us| *us > 0)
            .map(Duration::from_micros)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}

/// Whether an interface with this index exists in this thread's namespace.
pub fn ifindex_exists(index: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) }.is_null()
}

/// Sets `net.ipv6.conf.<ifname>.accept_dad` to 0 in this thread's namespace.
pub fn disable_dad(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/accept_dad");
    std::fs::write(&path, b"0").map_err(Error::io(path))
}
