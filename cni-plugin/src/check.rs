//! CHECK: compare what ADD made with the prevResult and name the first
//! difference: the pod interface (MAC, addresses, routes, gateway neighbour),
//! the host end (up, programs attached), the endpoint entries, the
//! reservation.

use std::net::IpAddr;

use weir_datapath::{attach, endpoint_info::EndpointInfo, maps::EndpointMap};

use crate::{
    common::{self, Attachment, gateway_for},
    config::{Env, NetConf},
    error::{Error, Result},
    netlink::{Netlink, format_mac, parse_mac},
    netns::{self, NetNs},
};

fn fail(msg: String) -> Error {
    Error::Check(msg)
}

pub fn run(env: &Env, conf: &NetConf) -> Result<()> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::config("prevResult", "CHECK needs the result of ADD"))?;
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| Error::env("CNI_NETNS", "not set"))?;
    let netns = NetNs::open(netns_path)?;
    let att = Attachment::of(env);
    let layout = common::layout(conf);
    weir_datapath::loader::check_pins(&layout)?;

    // What the prevResult says about our container interface.
    let sandbox = netns_path.to_string_lossy();
    let (pod_idx, pod_if) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == env.ifname && i.sandbox.as_deref() == Some(&*sandbox))
        .ok_or_else(|| {
            fail(format!(
                "prevResult lists no interface {} in {sandbox}",
                env.ifname
            ))
        })?;
    let want_mac = pod_if.mac.as_deref().and_then(parse_mac);
    let ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(pod_idx))
        .map(|ip| ip.address.ip())
        .collect();
    if ips.is_empty() {
        return Err(fail(format!("prevResult has no address on {}", env.ifname)));
    }

    let ipam = crate::del::ipam_for_cleanup(conf)?;
    match ipam
        .as_ref()
        .map(|i| i.get(&att.key))
        .transpose()?
        .flatten()
    {
        None => {
            return Err(fail(format!(
                "no IPAM reservation for container {} ifname {}",
                env.container_id, env.ifname
            )));
        }
        Some(a) => {
            let mut held: Vec<IpAddr> = a.ips.iter().map(|i| i.address.ip()).collect();
            let mut want = ips.clone();
            held.sort();
            want.sort();
            if held != want {
                return Err(fail(format!(
                    "the IPAM reservation holds {held:?}, prevResult says {want:?}"
                )));
            }
        }
    }

    common::runtime()?.block_on(async {
        let host_nl = Netlink::from_socket(netns::route_socket()?)?;
        let host = host_nl
            .link_by_name(&att.host_ifname)
            .await?
            .ok_or_else(|| fail(format!("host interface {} is missing", att.host_ifname)))?;
        if !host.up {
            return Err(fail(format!("host interface {} is down", host.name)));
        }
        if !attach::is_attached(&layout, &host.name)? {
            return Err(fail(format!(
                "weir's programs are not attached to {}",
                host.name
            )));
        }

        let pod_nl = Netlink::from_socket(netns::route_socket_in(&netns)?)?;
        let pod = pod_nl
            .link_by_name(&env.ifname)
            .await?
            .ok_or_else(|| fail(format!("{} is missing in {sandbox}", env.ifname)))?;
        if let Some(m) = want_mac
            && m != pod.mac
        {
            return Err(fail(format!(
                "{} has MAC {}, prevResult says {}",
                env.ifname,
                format_mac(&pod.mac),
                format_mac(&m)
            )));
        }
        if !pod.up {
            return Err(fail(format!("{} is down", env.ifname)));
        }
        let addrs = pod_nl.addresses(pod.index).await?;
        let neighbours = pod_nl.neighbours(pod.index).await?;
        for ip in &ips {
            if !addrs.iter().any(|a| a.ip() == *ip) {
                return Err(fail(format!("{} lacks the address {ip}", env.ifname)));
            }
            let gw = gateway_for(*ip);
            let routes = pod_nl.routes(ip.is_ipv6()).await?;
            if !routes
                .iter()
                .any(|r| r.dst.prefix() == 0 && r.gateway == Some(gw) && r.oif.is_some())
            {
                return Err(fail(format!(
                    "{} has no default route via {gw}",
                    env.ifname
                )));
            }
            if !neighbours
                .iter()
                .any(|n| n.ip == gw && n.mac == Some(host.mac) && n.permanent)
            {
                return Err(fail(format!(
                    "{} has no permanent neighbour {gw} lladdr {}",
                    env.ifname,
                    format_mac(&host.mac)
                )));
            }
        }

        let map = EndpointMap::open(&layout)?;
        for ip in &ips {
            match map.get(*ip)? {
                None => return Err(fail(format!("no endpoint entry for {ip}"))),
                Some(ep) if ep.ifindex != host.index || ep.mac != pod.mac => {
                    return Err(fail(format!(
                        "the endpoint entry of {ip} names ifindex {} MAC {}, expected {} {}",
                        ep.ifindex,
                        format_mac(&ep.mac),
                        host.index,
                        format_mac(&pod.mac)
                    )));
                }
                Some(_) => {}
            }
        }
        if EndpointInfo::read(&conf.endpoints_dir, &host.name)?.is_none() {
            return Err(fail(format!(
                "the endpoint record of {} is missing",
                host.name
            )));
        }
        Ok(())
    })
}
