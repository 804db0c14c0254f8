//! The rtnetlink operations weir needs, on a handle bound to one namespace.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
    link::{InfoData, InfoVeth, LinkAttribute, LinkFlags},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteScope, RouteVia},
};
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder, sys::TokioSocket,
};

use crate::error::{Error, Result};

const RT_TABLE_MAIN: u8 = 254;

/// A link as weir looks at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub up: bool,
    pub mtu: u32,
}

/// A route of the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

/// The errno of a netlink error reply, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A rtnetlink handle bound to the namespace its socket was opened in.
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Wraps a NETLINK_ROUTE socket (see [`crate::netns::route_socket`]);
    /// must run inside the tokio runtime, which drives the connection.
    pub fn from_socket(fd: OwnedFd) -> Result<Netlink> {
        // SAFETY: `fd` is an open NETLINK_ROUTE socket that we own.
        let socket = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_from(msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(Error::netlink(format!("looking up link {name}"))(e)),
        }
    }

    /// Creates the veth pair `host` / `peer`, the peer directly in the
    /// namespace `peer_netns`, both with `mtu`.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &std::fs::File,
        mtu: u32,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            if errno(&e) == Some(libc::EEXIST) {
                Error::AlreadyExists {
                    host: host.to_owned(),
                    detail: format!(
                        "creating the veth pair {host}/{peer}: {peer} or {host} exists"
                    ),
                }
            } else {
                Error::netlink(format!("creating the veth pair {host}/{peer}"))(e)
            }
        })
    }

    /// Deletes a link; succeeds when it is already gone.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(Error::netlink(format!("deleting link {index}"))(e)),
        }
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(Error::netlink(format!("setting link {index} up")))
    }

    /// Adds `ip` as a host address (/32 or /128; IPv6 without DAD).
    pub async fn add_host_address(&self, index: u32, ip: IpAddr) -> Result<()> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        let mut req = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(Error::netlink(format!(
            "adding {ip}/{prefix} to link {index}"
        )))
    }

    /// `ip route add <ip>/32 dev <index> scope link`.
    pub async fn add_host_route(&self, index: u32, ip: IpAddr) -> Result<()> {
        let msg = match ip {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .output_interface(index)
                .build(),
        };
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding the route to {ip} via link {index}"
            )))
    }

    /// `ip route add default via <gw> dev <index> onlink`.
    pub async fn add_default_route(&self, index: u32, gw: IpAddr) -> Result<()> {
        let msg = match gw {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(v4)
                .output_interface(index)
                .onlink()
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                .gateway(v6)
                .output_interface(index)
                .onlink()
                .build(),
        };
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            // Another interface of the pod holds the default route already:
            // the first attachment of a namespace is its default.
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(Error::netlink(format!("adding the default route via {gw}"))(e)),
        }
    }

    /// A PERMANENT neighbour entry `ip` → `mac` on link `index`.
    pub async fn add_permanent_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(Error::netlink(format!(
                "adding the neighbour {ip} lladdr {} on link {index}",
                format_mac(&mac)
            )))
    }

    /// Addresses of link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>> {
        let mut out = Vec::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(Error::netlink("listing addresses"))?
        {
            let len = msg.header.prefix_len;
            for attr in msg.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(net) = IpNetwork::new(ip, len)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// Routes of the main table of one family.
    pub async fn routes(&self, v6: bool) -> Result<Vec<RouteEntry>> {
        let msg = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut out = Vec::new();
        let mut routes = self.handle.route().get(msg).execute();
        while let Some(msg) = routes
            .try_next()
            .await
            .map_err(Error::netlink("listing routes"))?
        {
            if msg.header.table != RT_TABLE_MAIN {
                continue;
            }
            let len = msg.header.destination_prefix_length;
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for attr in msg.attributes {
                match attr {
                    RouteAttribute::Destination(a) => dst = route_addr(a),
                    RouteAttribute::Gateway(a) => gateway = route_addr(a),
                    RouteAttribute::Via(RouteVia::Inet6(a)) => gateway = Some(IpAddr::V6(a)),
                    RouteAttribute::Oif(i) => oif = Some(i),
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
            if let Ok(dst) = IpNetwork::new(dst, len) {
                out.push(RouteEntry { dst, gateway, oif });
            }
        }
        Ok(out)
    }

    /// Neighbour entries of link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        let mut neigh = self.handle.neighbours().get().execute();
        while let Some(msg) = neigh
            .try_next()
            .await
            .map_err(Error::netlink("listing neighbours"))?
        {
            if msg.header.ifindex != index
                || !matches!(
                    msg.header.family,
                    AddressFamily::Inet | AddressFamily::Inet6
                )
            {
                continue;
            }
            let permanent = msg.header.state == NeighbourState::Permanent;
            let mut ip = None;
            let mut mac = None;
            for attr in msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        ip = Some(IpAddr::V4(a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        ip = Some(IpAddr::V6(a))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(&l);
                        mac = Some(m);
                    }
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neighbour { ip, mac, permanent });
            }
        }
        Ok(out)
    }
}

fn route_addr(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    }
}

fn link_from(msg: netlink_packet_route::link::LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        up: msg.header.flags.contains(LinkFlags::Up),
        mtu: 0,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
            LinkAttribute::Mtu(m) => link.mtu = m,
            _ => {}
        }
    }
    link
}
