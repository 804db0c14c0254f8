//! DEL: remove the endpoint entries, the link pins, the host veth (its peer
//! goes with it), the record and the reservation. Needs neither the netns nor
//! a prevResult, and succeeds when any of it is gone already.

use std::{collections::BTreeSet, net::IpAddr};

use weir_datapath::{PinLayout, attach, endpoint_info::EndpointInfo, maps::EndpointMap};
use weir_ipam::Ipam;

use crate::{
    common::{self, Attachment},
    config::{Env, NetConf},
    error::Result,
    netlink::Netlink,
    netns,
};

pub fn run(env: &Env, conf: &NetConf) -> Result<()> {
    let att = Attachment::of(env);
    let ipam = ipam_for_cleanup(conf)?;
    let mut extra_ips = Vec::new();
    if let Some(prev) = &conf.prev_result {
        extra_ips.extend(prev.ips.iter().map(|ip| ip.address.ip()));
    }
    common::runtime()?.block_on(async {
        let host_nl = Netlink::from_socket(netns::route_socket()?)?;
        remove_attachment(conf, &host_nl, ipam.as_ref(), &att, &extra_ips).await
    })
}

/// The IPAM state of the network, for lookups and releases by key. When no
/// pool can be built (node.json is gone with weir-node, and the config names
/// no ranges), the state is opened over a stand-in pool: get, release and gc
/// go by key, and the pool only describes addresses it holds.
pub fn ipam_for_cleanup(conf: &NetConf) -> Result<Option<Ipam>> {
    if !common::ipam_dir(conf).exists() {
        return Ok(None);
    }
    let pool = match common::pool(conf, None) {
        Ok(p) => p,
        Err(_) => {
            let stand_in: ipnetwork::IpNetwork = "192.0.2.0/24".parse().expect("valid CIDR");
            weir_ipam::Pool::from_cidrs(&[stand_in])?
        }
    };
    common::open_ipam(conf, pool).map(Some)
}

/// Removes everything of one attachment, in the reverse order of ADD.
pub async fn remove_attachment(
    conf: &NetConf,
    host_nl: &Netlink,
    ipam: Option<&Ipam>,
    att: &Attachment,
    extra_ips: &[IpAddr],
) -> Result<()> {
    let layout = common::layout(conf);
    let host = &att.host_ifname;
    let link = host_nl.link_by_name(host).await?;
    // A record that cannot be read is replaced by what IPAM knows.
    let record = EndpointInfo::read(&conf.endpoints_dir, host).ok().flatten();
    let allocation = match ipam {
        Some(ipam) => ipam.get(&att.key)?,
        None => None,
    };

    let mut ips: BTreeSet<IpAddr> = extra_ips.iter().copied().collect();
    if let Some(r) = &record {
        ips.extend(r.ips.iter().copied());
    }
    if let Some(a) = &allocation {
        ips.extend(a.ips.iter().map(|ip| ip.address.ip()));
    }
    let ours = |ifindex: u32| {
        link.as_ref().is_some_and(|l| l.index == ifindex)
            || record.as_ref().is_some_and(|r| r.host_ifindex == ifindex)
            || !common::ifindex_exists(ifindex)
    };
    remove_endpoints(&layout, &ips, ours)?;
    attach::detach_interface(&layout, host)?;
    if let Some(link) = link {
        host_nl.delete_link(link.index).await?;
    }
    EndpointInfo::remove(&conf.endpoints_dir, host)?;
    if let Some(ipam) = ipam {
        ipam.release(&att.key)?;
    }
    Ok(())
}

/// Removes the endpoint entries of `ips` that belong to this attachment
/// (`ours` of their ifindex): an address may already serve another pod.
fn remove_endpoints(
    layout: &PinLayout,
    ips: &BTreeSet<IpAddr>,
    ours: impl Fn(u32) -> bool,
) -> Result<()> {
    if ips.is_empty() || !layout.map(weir_common::map_names::ENDPOINTS).exists() {
        return Ok(());
    }
    let mut map = EndpointMap::open(layout)?;
    for ip in ips {
        if let Some(ep) = map.get(*ip)?
            && ours(ep.ifindex)
        {
            map.remove(*ip)?;
        }
    }
    Ok(())
}
