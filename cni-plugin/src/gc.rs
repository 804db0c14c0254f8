//! GC: release every attachment of this network that is not in
//! `cni.dev/valid-attachments`: reservations, endpoint records and entries,
//! link pins and host veths. Endpoint entries whose interface is gone and
//! link pins of vanished interfaces go too.

use std::collections::{BTreeMap, BTreeSet};

use weir_datapath::{attach, endpoint_info::EndpointInfo, maps::EndpointMap};

use crate::{
    common::{self, Attachment},
    config::NetConf,
    del,
    error::Result,
    netlink::Netlink,
    netns,
};

pub fn run(conf: &NetConf) -> Result<()> {
    let valid: BTreeSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let valid_names: BTreeSet<String> = valid
        .iter()
        .map(|(c, i)| Attachment::new(c, i).host_ifname)
        .collect();
    let ipam = del::ipam_for_cleanup(conf)?;

    // The attachments to remove, by host interface.
    let mut stale: BTreeMap<String, Attachment> = BTreeMap::new();
    if let Some(ipam) = &ipam {
        for a in ipam.list()? {
            if !valid.contains(&(a.key.container_id.clone(), a.key.ifname.clone())) {
                let att = Attachment::new(&a.key.container_id, &a.key.ifname);
                stale.insert(att.host_ifname.clone(), att);
            }
        }
    }
    let (records, _unreadable) = EndpointInfo::list(&conf.endpoints_dir);
    for r in &records {
        if !valid.contains(&(r.container_id.clone(), r.ifname.clone())) {
            let att = Attachment::new(&r.container_id, &r.ifname);
            stale.insert(att.host_ifname.clone(), att);
        }
    }

    let layout = common::layout(conf);
    common::runtime()?.block_on(async {
        let host_nl = Netlink::from_socket(netns::route_socket()?)?;
        for att in stale.values() {
            if valid_names.contains(&att.host_ifname) {
                continue;
            }
            del::remove_attachment(conf, &host_nl, ipam.as_ref(), att, &[]).await?;
        }
        // Link pins of interfaces that are gone.
        for ifname in attach::linked_interfaces(&layout)? {
            if !valid_names.contains(&ifname) && host_nl.link_by_name(&ifname).await?.is_none() {
                attach::detach_interface(&layout, &ifname)?;
            }
        }
        Ok::<_, crate::error::Error>(())
    })?;
    // Whatever IPAM still holds outside the valid set (each attachment above
    // released its own reservation after its interface was gone).
    if let Some(ipam) = &ipam {
        let keep: Vec<weir_ipam::Key> = valid
            .iter()
            .map(|(c, i)| Attachment::new(c, i).key)
            .collect();
        ipam.gc(&keep)?;
    }

    // Endpoint entries whose interface no longer exists.
    if layout.map(weir_common::map_names::ENDPOINTS).exists() {
        let mut map = EndpointMap::open(&layout)?;
        for (ip, ep) in map.list()? {
            if !common::ifindex_exists(ep.ifindex) {
                map.remove(ip)?;
            }
        }
    }
    Ok(())
}
