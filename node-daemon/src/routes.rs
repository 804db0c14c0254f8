//! Node routes (native routing): one route per remote pod CIDR via the node
//! that owns it, in the main table, marked with weir's own route protocol
//! number so that reconcile and uninstall find exactly weir's routes and no
//! one else's.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        link::LinkAttribute,
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
    },
};

/// The route protocol number that marks weir's routes (`ip route ... proto
/// 87`, `ip -j route` shows `"protocol": "87"`). Unassigned in
/// iproute2's rt_protos.
pub const ROUTE_PROTOCOL: u8 = 87;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("listing routes: {0}")]
    List(#[source] rtnetlink::Error),
    #[error("adding route {net} via {via}: {source}")]
    Add {
        net: IpNetwork,
        via: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing route {net}: {source}")]
    Remove {
        net: IpNetwork,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("reading interface {index}: {source}")]
    Link {
        index: u32,
        #[source]
        source: rtnetlink::Error,
    },
}

/// One of weir's routes as found in the kernel.
#[derive(Clone, Debug)]
pub struct WeirRoute {
    pub via: Option<IpAddr>,
    message: RouteMessage,
}

/// A netlink handle for weir's routes. Must be created inside a tokio
/// runtime (the connection task is spawned on it).
#[derive(Clone)]
pub struct Routes {
    handle: Handle,
}

impl Routes {
    pub fn connect() -> Result<Routes, RouteError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        tokio::spawn(connection);
        Ok(Routes { handle })
    }

    async fn dump(&self, family: AddressFamily) -> Result<Vec<RouteMessage>, RouteError> {
        let mut request = match family {
            AddressFamily::Inet6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            _ => RouteMessageBuilder::<Ipv4Addr>::new().build(),
        };
        request.header.protocol = RouteProtocol::Unspec;
        request.header.table = RouteHeader::RT_TABLE_UNSPEC;
        request.header.scope = rtnetlink::packet_route::route::RouteScope::Universe;
        self.handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(RouteError::List)
    }

    /// weir's routes in the main table, by destination.
    pub async fn list(&self) -> Result<BTreeMap<IpNetwork, WeirRoute>, RouteError> {
        let mut out = BTreeMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for message in self.dump(family).await? {
                if message.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                    || table_of(&message) != u32::from(RouteHeader::RT_TABLE_MAIN)
                {
                    continue;
                }
                let Some(net) = destination_of(&message) else {
                    continue;
                };
                let via = message.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(g) => address(g),
                    _ => None,
                });
                out.insert(net, WeirRoute { via, message });
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) the route to `net` via `via`.
    pub async fn replace(&self, net: IpNetwork, via: IpAddr) -> Result<(), RouteError> {
        let message = match (net, via) {
            (IpNetwork::V4(n), IpAddr::V4(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .gateway(g)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build(),
            (IpNetwork::V6(n), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix())
                .gateway(g)
                .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
                .build(),
            _ => {
                return Err(RouteError::Add {
                    net,
                    via,
                    source: rtnetlink::Error::InvalidNla(
                        "gateway of another address family".into(),
                    ),
                });
            }
        };
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Add { net, via, source })
    }

    /// Removes one of weir's routes, as listed. A route that is already gone
    /// is not an error.
    pub async fn remove(&self, net: IpNetwork, route: &WeirRoute) -> Result<(), RouteError> {
        match self
            .handle
            .route()
            .del(route.message.clone())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
            Err(source) => Err(RouteError::Remove { net, source }),
        }
    }

    /// Removes every route of weir's; returns how many there were.
    pub async fn remove_all(&self) -> Result<usize, RouteError> {
        let routes = self.list().await?;
        for (net, route) in &routes {
            self.remove(*net, route).await?;
        }
        Ok(routes.len())
    }

    /// MTU of the interface of the IPv4 default route (the uplink), if there
    /// is one.
    pub async fn uplink_mtu(&self) -> Result<Option<u32>, RouteError> {
        let mut oif = None;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for message in self.dump(family).await? {
                if message.header.destination_prefix_length == 0
                    && table_of(&message) == u32::from(RouteHeader::RT_TABLE_MAIN)
                    && let Some(index) = message.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    })
                {
                    oif = Some(index);
                    break;
                }
            }
            if oif.is_some() {
                break;
            }
        }
        let Some(index) = oif else { return Ok(None) };
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Link { index, source })?;
        Ok(links
            .iter()
            .flat_map(|l| l.attributes.iter())
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            }))
    }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

fn table_of(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn destination_of(message: &RouteMessage) -> Option<IpNetwork> {
    let len = message.header.destination_prefix_length;
    let dst = message.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => address(d),
        _ => None,
    })?;
    IpNetwork::new(dst, len).ok()
}
