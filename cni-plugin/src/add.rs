//! ADD: reserve addresses, create the veth pair with its container end in the
//! pod's namespace, configure both ends, attach the pinned programs, write
//! the endpoint entries and record. A failure at any step undoes the earlier
//! ones.

use std::{collections::BTreeMap, net::IpAddr, sync::Mutex, thread::JoinHandle};

use serde_json::{Value, json};
use weir_common::{ENDPOINT_F_READY, Endpoint};
use weir_datapath::{
    attach::{self, AttachMode},
    endpoint_info::EndpointInfo,
    loader,
    maps::EndpointMap,
};
use weir_ipam::Ipam;

use crate::{
    common::{self, Attachment, gateway_for, step_pause},
    config::{Env, NetConf},
    error::{Error, Result},
    netlink::{Link, Netlink, format_mac},
    netns::{self, NetNs},
    result::{CniResult, Interface, IpConfig, Route},
};

/// What has been done so far, undone in reverse on failure.
enum Undo {
    Reservation,
    Veth,
    Links,
    MapEntries(Vec<IpAddr>),
    Record,
}

pub fn run(env: &Env, conf: &NetConf) -> Result<Value> {
    let netns_path = env
        .netns
        .as_ref()
        .ok_or_else(|| Error::env("CNI_NETNS", "not set"))?;
    let netns = NetNs::open(netns_path)?;
    let layout = common::layout(conf);
    loader::check_pins(&layout)?;
    let node = if conf.mtu.is_none() || conf.ranges.is_none() {
        Some(common::node_info(conf)?)
    } else {
        None
    };
    let mtu = conf
        .mtu
        .or(node.as_ref().map(|n| n.mtu))
        .ok_or_else(|| Error::config("mtu", "not set and no node info"))?;
    let pool = common::pool(conf, node.as_ref())?;
    let dual_v6 = pool.sets().iter().any(|s| !s.is_ipv4());
    if dual_v6 && mtu < 1280 {
        return Err(Error::config(
            "mtu",
            format!("{mtu} is below IPv6's minimum of 1280"),
        ));
    }
    let att = Attachment::of(env);
    let mode = conf.attach_mode.unwrap_or_else(AttachMode::detect);

    common::runtime()?.block_on(async {
        let host_nl = Netlink::from_socket(netns::route_socket()?)?;
        crate::log::mark("prepare");
        if let Some(link) = host_nl.link_by_name(&att.host_ifname).await? {
            return Err(Error::AlreadyExists {
                host: att.host_ifname.clone(),
                detail: format!(
                    "container {} ifname {} is attached already (ifindex {}); DEL it first",
                    env.container_id, env.ifname, link.index
                ),
            });
        }
        let ipam = common::open_ipam(conf, pool)?;
        let mut undo = Vec::new();
        let plan = Plan {
            env,
            conf,
            att: &att,
            netns: &netns,
            host_nl: &host_nl,
            ipam: &ipam,
            mtu,
            mode,
            v6: dual_v6,
            attacher: Mutex::new(None),
        };
        match plan.execute(&mut undo).await {
            Ok(result) => Ok(result),
            Err(e) => {
                plan.rollback(undo).await;
                Err(e)
            }
        }
    })
}

struct Plan<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    att: &'a Attachment,
    netns: &'a NetNs,
    host_nl: &'a Netlink,
    ipam: &'a Ipam,
    mtu: u32,
    mode: AttachMode,
    /// Whether the pool hands out IPv6 addresses.
    v6: bool,
    /// The thread attaching the programs, until it is joined.
    attacher: Mutex<Option<JoinHandle<weir_datapath::Result<()>>>>,
}

fn poisoned() -> Error {
    Error::Internal("a lock was poisoned".into())
}

impl Plan<'_> {
    /// Waits for the attaching thread and returns its outcome.
    fn join_attacher(&self) -> Result<()> {
        let handle = self.attacher.lock().map_err(|_| poisoned())?.take();
        match handle {
            None => Ok(()),
            Some(h) => h
                .join()
                .map_err(|_| Error::Internal("the attaching thread panicked".into()))?
                .map_err(Error::from),
        }
    }

    async fn execute(&self, undo: &mut Vec<Undo>) -> Result<Value> {
        let conf = self.conf;
        let host = &self.att.host_ifname;
        let ifname = &self.env.ifname;

        let mut labels = BTreeMap::new();
        if let Some(ns) = &self.env.args.pod_namespace {
            labels.insert("podNamespace".to_owned(), ns.clone());
        }
        if let Some(name) = &self.env.args.pod_name {
            labels.insert("podName".to_owned(), name.clone());
        }
        undo.push(Undo::Veth);
        self.host_nl
            .create_veth(host, ifname, &self.netns.file, self.mtu)
            .await?;
        let host_link = self.link(self.host_nl, host).await?;
        step_pause("veth");

        // Attaching waits for an RCU grace period per hook in TCX mode: let
        // it run beside the reservation's fsyncs. The thread is created by
        // this (host namespace) thread and stays in its namespace.
        undo.push(Undo::Links);
        let layout = common::layout(conf);
        let (l, h, mode) = (layout.clone(), host.clone(), self.mode);
        *self.attacher.lock().map_err(|_| poisoned())? = Some(std::thread::spawn(move || {
            attach::attach_interface(&l, &h, mode)
        }));

        undo.push(Undo::Reservation);
        let allocation = self.ipam.allocate(&self.att.key, &labels)?;
        let ips: Vec<IpAddr> = allocation.ips.iter().map(|a| a.address.ip()).collect();
        let has_v6 = self.v6;
        step_pause("ipam");

        // The container end, through a socket opened inside the pod.
        let pod_socket = netns::run_in(self.netns, || {
            if has_v6 {
                common::disable_dad(ifname)?;
            }
            netns::route_socket()
        })?;
        let pod_nl = Netlink::from_socket(pod_socket)?;
        let pod_link = self.link(&pod_nl, ifname).await?;
        for ip in &ips {
            pod_nl.add_host_address(pod_link.index, *ip).await?;
        }
        pod_nl.set_up(pod_link.index).await?;
        for gw in gateways(&ips) {
            pod_nl
                .add_permanent_neighbour(pod_link.index, gw, host_link.mac)
                .await?;
            pod_nl.add_default_route(pod_link.index, gw).await?;
        }
        step_pause("pod");

        // The host end.
        if has_v6 {
            common::disable_dad(host)?;
        }
        self.host_nl.set_up(host_link.index).await?;
        for ip in &ips {
            self.host_nl.add_host_route(host_link.index, *ip).await?;
            self.host_nl
                .add_permanent_neighbour(host_link.index, *ip, pod_link.mac)
                .await?;
        }
        step_pause("host");

        self.join_attacher()?;
        step_pause("attach");

        undo.push(Undo::MapEntries(ips.clone()));
        let mut endpoints = EndpointMap::open(&layout)?;
        for ip in &ips {
            endpoints.upsert(
                *ip,
                Endpoint {
                    ifindex: host_link.index,
                    flags: ENDPOINT_F_READY,
                    mac: pod_link.mac,
                    host_mac: host_link.mac,
                },
            )?;
        }
        step_pause("endpoints");

        undo.push(Undo::Record);
        EndpointInfo {
            container_id: self.env.container_id.clone(),
            ifname: ifname.clone(),
            host_ifname: host.clone(),
            host_ifindex: host_link.index,
            netns: self.netns.path.to_str().unwrap_or_default().to_owned(),
            ips: ips.clone(),
            mac: format_mac(&pod_link.mac),
            pod_namespace: self.env.args.pod_namespace.clone(),
            pod_name: self.env.args.pod_name.clone(),
        }
        .write(&conf.endpoints_dir)?;
        step_pause("record");

        let ours = result(self, &host_link, &pod_link, &ips);
        let full = match &conf.prev_result {
            Some(prev) => prev.clone().merge(ours),
            None => ours,
        };
        Ok(full.to_json(conf.version))
    }

    async fn link(&self, nl: &Netlink, name: &str) -> Result<Link> {
        nl.link_by_name(name)
            .await?
            .ok_or_else(|| Error::Internal(format!("link {name} vanished after it was created")))
    }

    /// Undoes `undo` in reverse. Every step is tried; failures are left to
    /// DEL and GC, which find the same state.
    async fn rollback(&self, undo: Vec<Undo>) {
        // The programs may still be being attached: let that finish first.
        let _ = self.join_attacher();
        let layout = common::layout(self.conf);
        let host = &self.att.host_ifname;
        for step in undo.into_iter().rev() {
            match step {
                Undo::Record => {
                    let _ = EndpointInfo::remove(&self.conf.endpoints_dir, host);
                }
                Undo::MapEntries(ips) => {
                    if let Ok(mut map) = EndpointMap::open(&layout) {
                        for ip in ips {
                            let _ = map.remove(ip);
                        }
                    }
                }
                Undo::Links => {
                    let _ = attach::detach_interface(&layout, host);
                }
                Undo::Veth => {
                    if let Ok(Some(link)) = self.host_nl.link_by_name(host).await {
                        let _ = self.host_nl.delete_link(link.index).await;
                    }
                }
                Undo::Reservation => {
                    let _ = self.ipam.release(&self.att.key);
                }
            }
        }
    }
}

/// The pod's gateways, one per family present in `ips`.
fn gateways(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        let gw = gateway_for(*ip);
        if !out.contains(&gw) {
            out.push(gw);
        }
    }
    out
}

fn result(plan: &Plan<'_>, host: &Link, pod: &Link, ips: &[IpAddr]) -> CniResult {
    let mtu_extra = |mtu: u32| {
        let mut m = serde_json::Map::new();
        m.insert("mtu".into(), json!(mtu));
        m
    };
    let interfaces = vec![
        Interface {
            name: host.name.clone(),
            mac: Some(format_mac(&host.mac)),
            sandbox: None,
            extra: mtu_extra(plan.mtu),
        },
        Interface {
            name: pod.name.clone(),
            mac: Some(format_mac(&pod.mac)),
            sandbox: Some(plan.netns.path.to_string_lossy().into_owned()),
            extra: mtu_extra(plan.mtu),
        },
    ];
    let ips_out = ips
        .iter()
        .map(|ip| IpConfig {
            address: ipnetwork::IpNetwork::new(*ip, if ip.is_ipv4() { 32 } else { 128 })
                .expect("host prefix fits"),
            gateway: Some(gateway_for(*ip)),
            interface: Some(1),
        })
        .collect();
    let routes = gateways(ips)
        .into_iter()
        .map(|gw| Route {
            dst: if gw.is_ipv4() {
                "0.0.0.0/0".parse().expect("valid")
            } else {
                "::/0".parse().expect("valid")
            },
            gw: Some(gw),
            extra: serde_json::Map::new(),
        })
        .collect();
    CniResult {
        interfaces,
        ips: ips_out,
        routes,
        dns: plan.conf.dns.clone(),
    }
}
