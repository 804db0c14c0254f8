//! The service map wrappers against real pinned maps: programming touches
//! only the service's own entries, shrinking and growing keep slots dense,
//! backend purges and conntrack sweeps remove exactly what they should, and
//! 20,000 services x 8 backends fit.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::maps::{HashMap, Map, MapData};
use weir_common::{CT_F_CLOSING, CtEntry, FlowKey, IpKey, RevNatEntry, map_names};
use weir_datapath::{
    PinLayout, bpffs, loader, object,
    services::{BackendAddr, CtTimeouts, Frontend, ServiceMaps, ServiceSpec, reply_of},
};

struct PinDir(PinLayout);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).expect("bpffs");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let layout = PinLayout::new(PathBuf::from(format!(
            "/sys/fs/bpf/weir-test-svc-{tag}-{}-{nanos}",
            std::process::id()
        )));
        loader::load(&layout, object::OBJECT).expect("load");
        PinDir(layout)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = loader::unpin_all(&self.0);
    }
}

fn fe(ip: &str, port: u16) -> Frontend {
    Frontend::cluster_ip(ip.parse().unwrap(), port, 6)
}

fn be(ip: &str, port: u16) -> BackendAddr {
    BackendAddr {
        ip: ip.parse().unwrap(),
        port,
    }
}

fn spec(id: u32, backends: &[BackendAddr]) -> ServiceSpec {
    ServiceSpec {
        id,
        backends: backends.to_vec(),
        affinity_timeout_s: None,
    }
}

fn backend_slots(layout: &PinLayout) -> Vec<(u32, u32)> {
    let data = MapData::from_pin(layout.map(map_names::BACKENDS)).unwrap();
    let map: HashMap<MapData, weir_common::BackendKey, weir_common::Backend> =
        HashMap::try_from(Map::from_map_data(data).unwrap()).unwrap();
    let mut keys: Vec<(u32, u32)> = map
        .keys()
        .map(|k| k.unwrap())
        .map(|k| (k.service_id, k.slot))
        .collect();
    keys.sort();
    keys
}

#[test]
fn growing_shrinking_and_removing_a_service_touch_only_its_own_slots() {
    let dir = PinDir::new("grow");
    let mut maps = ServiceMaps::open(&dir.0).unwrap();
    let a = fe("10.96.0.1", 80);
    let b = fe("10.96.0.2", 443);
    maps.upsert(
        &a,
        &spec(
            1,
            &[
                be("10.0.0.1", 8080),
                be("10.0.0.2", 8080),
                be("10.0.0.3", 8080),
            ],
        ),
    )
    .unwrap();
    maps.upsert(&b, &spec(2, &[be("10.0.1.1", 8443)])).unwrap();
    assert_eq!(backend_slots(&dir.0), vec![(1, 0), (1, 1), (1, 2), (2, 0)]);

    maps.upsert(&a, &spec(1, &[be("10.0.0.2", 8080)])).unwrap();
    assert_eq!(
        backend_slots(&dir.0),
        vec![(1, 0), (2, 0)],
        "surplus slots removed"
    );
    let listed = maps.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].0, a);
    assert_eq!(listed[0].1.backend_count, 1);
    assert_eq!(listed[0].2, vec![be("10.0.0.2", 8080)]);
    assert_eq!(
        listed[1].2,
        vec![be("10.0.1.1", 8443)],
        "the other service is untouched"
    );

    maps.upsert(&a, &spec(1, &[])).unwrap();
    assert_eq!(
        maps.get(&a).unwrap().map(|s| s.backend_count),
        Some(0),
        "kept, rejecting"
    );
    maps.remove(&a).unwrap();
    maps.remove(&a).unwrap();
    assert_eq!(maps.get(&a).unwrap(), None);
    assert_eq!(backend_slots(&dir.0), vec![(2, 0)]);
}

fn flow(client: &str, cport: u16, vip: &str, vport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: IpKey::from(client.parse::<IpAddr>().unwrap()).addr,
        dst: IpKey::from(vip.parse::<IpAddr>().unwrap()).addr,
        sport_be: cport.to_be(),
        dport_be: vport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

/// Inserts a flow's conntrack and reverse-NAT entries as the datapath would.
fn track(layout: &PinLayout, key: FlowKey, backend: BackendAddr, flags: u16, last_seen_ns: u64) {
    let open = |name| {
        let data = MapData::from_pin(layout.map(name)).unwrap();
        match Map::from_map_data(data).unwrap() {
            Map::LruHashMap(d) => Map::HashMap(d),
            m => m,
        }
    };
    let mut ct: HashMap<MapData, FlowKey, CtEntry> =
        HashMap::try_from(open(map_names::CONNTRACK)).unwrap();
    let mut rev: HashMap<MapData, FlowKey, RevNatEntry> =
        HashMap::try_from(open(map_names::REVNAT)).unwrap();
    let entry = CtEntry {
        backend: backend.to_map(),
        service_id: 1,
        flags,
        snat_port_be: 0,
        last_seen_ns,
    };
    ct.insert(key, entry, 0).unwrap();
    rev.insert(
        reply_of(&key, &entry),
        RevNatEntry {
            vip: key.dst,
            orig_dst: key.src,
            vport_be: key.dport_be,
            orig_dport_be: key.sport_be,
            flags: 0,
            service_id: 1,
            _pad: 0,
            last_seen_ns,
        },
        0,
    )
    .unwrap();
}

#[test]
fn sweep_expires_idle_and_closed_flows_and_purge_forgets_a_backends_udp_flows() {
    let dir = PinDir::new("ct");
    let now = 1_000_000 * 1_000_000_000u64;
    let t = CtTimeouts::default();
    let b1 = be("10.0.0.1", 53);
    let b2 = be("10.0.0.2", 53);
    // Fresh TCP, TCP closed long enough ago, idle UDP, fresh UDP on b1 and b2.
    track(
        &dir.0,
        flow("10.1.0.1", 1000, "10.96.0.1", 80, 6),
        b1,
        0,
        now - 1_000_000_000,
    );
    track(
        &dir.0,
        flow("10.1.0.1", 1001, "10.96.0.1", 80, 6),
        b1,
        CT_F_CLOSING,
        now - t.tcp_closing_ns - 1,
    );
    track(
        &dir.0,
        flow("10.1.0.1", 1002, "10.96.0.1", 53, 17),
        b1,
        0,
        now - t.udp_ns - 1,
    );
    track(
        &dir.0,
        flow("10.1.0.1", 1003, "10.96.0.1", 53, 17),
        b1,
        0,
        now,
    );
    track(
        &dir.0,
        flow("10.1.0.1", 1004, "10.96.0.1", 53, 17),
        b2,
        0,
        now,
    );

    let mut maps = ServiceMaps::open(&dir.0).unwrap();
    assert_eq!(
        maps.sweep(now, &t).unwrap(),
        2,
        "the closed TCP and the idle UDP flow"
    );
    let mut left: Vec<u16> = maps
        .conntrack()
        .unwrap()
        .iter()
        .map(|(k, _)| u16::from_be(k.sport_be))
        .collect();
    left.sort();
    assert_eq!(left, vec![1000, 1003, 1004]);
    assert_eq!(
        maps.revnat().unwrap().len(),
        3,
        "reverse entries go with their flows"
    );

    assert_eq!(
        maps.purge_backend(&b1, 17).unwrap(),
        1,
        "b1's UDP flow only"
    );
    let mut left: Vec<u16> = maps
        .conntrack()
        .unwrap()
        .iter()
        .map(|(k, _)| u16::from_be(k.sport_be))
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![1000, 1004],
        "TCP to b1 keeps its flow; b2 untouched"
    );
}

#[test]
fn twenty_thousand_services_with_eight_backends_each_fit_and_list_back() {
    let dir = PinDir::new("20k");
    let mut maps = ServiceMaps::open(&dir.0).unwrap();
    let started = Instant::now();
    for i in 0..20_000u32 {
        let vip = IpAddr::from([10, 96, (i >> 8) as u8, i as u8]);
        let backends: Vec<BackendAddr> = (0..8u32)
            .map(|j| BackendAddr {
                ip: IpAddr::from([10, 1 + (j as u8), (i >> 8) as u8, i as u8]),
                port: 8080,
            })
            .collect();
        maps.upsert(
            &Frontend::cluster_ip(vip, 80, 6),
            &ServiceSpec {
                id: i + 1,
                backends,
                affinity_timeout_s: None,
            },
        )
        .unwrap();
    }
    eprintln!(
        "programmed 20,000 services x 8 backends in {:?}",
        started.elapsed()
    );
    let listed = maps.list().unwrap();
    assert_eq!(listed.len(), 20_000);
    assert!(
        listed
            .iter()
            .all(|(_, s, b)| s.backend_count == 8 && b.len() == 8)
    );
    assert_eq!(backend_slots(&dir.0).len(), 160_000);
}
