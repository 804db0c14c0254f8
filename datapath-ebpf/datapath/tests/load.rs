//! The embedded object against the real kernel: every program passes the
//! verifier, every map has the layout of its `common` type, pins are reused,
//! other ABIs are refused, and pods can be attached in both modes. Runs as
//! root on a bpffs; each test owns a uniquely named pin directory (and, where
//! it needs interfaces, a network namespace of its own) and removes them even
//! when it fails.

use std::{
    mem::size_of,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use aya::maps::{Array, Map, MapData, MapInfo};
use weir_common::{
    ABI_VERSION, AffinityEntry, AffinityKey, Backend, BackendKey, CtEntry, DropKey, Endpoint,
    FlowKey, IpKey, Meta, NODES_KEY_SIZE, RemoteNode, RevNatEntry, Service, ServiceKey, Traffic,
    capacity, map_names, program_names,
};
use weir_datapath::{
    Error, PinLayout,
    attach::{self, AttachMode},
    bpffs, loader,
    maps::EndpointMap,
    object,
};

/// A pin directory of the test's own, removed on drop.
struct PinDir {
    layout: PinLayout,
}

impl PinDir {
    fn new(tag: &str) -> PinDir {
        bpffs::ensure_mounted(Path::new("/sys/fs/bpf")).expect("bpffs at /sys/fs/bpf");
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/weir-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        PinDir {
            layout: PinLayout::new(root),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = loader::unpin_all(&self.layout);
    }
}

fn map_info(layout: &PinLayout, name: &str) -> MapInfo {
    MapInfo::from_pin(layout.map(name)).unwrap_or_else(|e| panic!("map {name} pinned: {e}"))
}

#[test]
fn every_program_passes_the_verifier_and_every_map_has_its_common_layout() {
    let dir = PinDir::new("verify");
    let report = loader::load(&dir.layout, object::OBJECT).expect("load the embedded object");

    let loaded: Vec<&str> = report.programs.iter().map(|p| p.name).collect();
    assert_eq!(loaded, program_names::ALL.to_vec());
    for p in &report.programs {
        assert!(p.id > 0, "{} has a kernel id", p.name);
        assert!(dir.layout.program(p.name).exists(), "{} is pinned", p.name);
    }
    assert_eq!(report.created_maps, map_names::ALL.to_vec());
    assert!(report.reused_maps.is_empty());

    let expect: [(&str, usize, usize, u32); 10] = [
        (
            map_names::ENDPOINTS,
            size_of::<IpKey>(),
            size_of::<Endpoint>(),
            capacity::ENDPOINTS,
        ),
        (
            map_names::NODES,
            NODES_KEY_SIZE,
            size_of::<RemoteNode>(),
            capacity::NODES,
        ),
        (
            map_names::TRAFFIC,
            size_of::<u32>(),
            size_of::<Traffic>(),
            capacity::TRAFFIC,
        ),
        (
            map_names::DROPS,
            size_of::<DropKey>(),
            size_of::<u64>(),
            capacity::DROPS,
        ),
        (
            map_names::META,
            size_of::<u32>(),
            size_of::<Meta>(),
            capacity::META,
        ),
        (
            map_names::SERVICES,
            size_of::<ServiceKey>(),
            size_of::<Service>(),
            capacity::SERVICES,
        ),
        (
            map_names::BACKENDS,
            size_of::<BackendKey>(),
            size_of::<Backend>(),
            capacity::BACKENDS,
        ),
        (
            map_names::CONNTRACK,
            size_of::<FlowKey>(),
            size_of::<CtEntry>(),
            capacity::CONNTRACK,
        ),
        (
            map_names::REVNAT,
            size_of::<FlowKey>(),
            size_of::<RevNatEntry>(),
            capacity::REVNAT,
        ),
        (
            map_names::AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityEntry>(),
            capacity::AFFINITY,
        ),
    ];
    assert_eq!(expect.len(), map_names::ALL.len(), "every map is checked");
    for (name, key, value, max) in expect {
        let info = map_info(&dir.layout, name);
        assert_eq!(info.key_size() as usize, key, "{name} key size");
        assert_eq!(info.value_size() as usize, value, "{name} value size");
        assert_eq!(info.max_entries(), max, "{name} capacity");
    }
    let meta = loader::check_pins(&dir.layout).expect("pins are usable");
    assert_eq!(meta.abi_version, ABI_VERSION);
    assert_eq!(meta.object_digest, object::digest());
}

#[test]
fn a_second_load_reuses_the_maps_and_keeps_their_contents() {
    let dir = PinDir::new("reuse");
    loader::load(&dir.layout, object::OBJECT).expect("first load");
    let ip: IpAddr = "10.244.7.9".parse().unwrap();
    let ep = Endpoint {
        ifindex: 4242,
        flags: weir_common::ENDPOINT_F_READY,
        mac: [2, 0, 0, 0, 0, 1],
        host_mac: [2, 0, 0, 0, 0, 2],
    };
    EndpointMap::open(&dir.layout)
        .unwrap()
        .upsert(ip, ep)
        .unwrap();
    let before = loader::pinned_program_ids(&dir.layout).unwrap();

    let report = loader::load(&dir.layout, object::OBJECT).expect("second load");
    assert_eq!(report.reused_maps, map_names::ALL.to_vec());
    assert!(report.created_maps.is_empty());
    assert_eq!(report.previous_digest, Some(object::digest()));
    assert_eq!(
        EndpointMap::open(&dir.layout).unwrap().get(ip).unwrap(),
        Some(ep)
    );
    let after = loader::pinned_program_ids(&dir.layout).unwrap();
    assert_ne!(before, after, "programs were reloaded and re-pinned");
}

#[test]
fn pins_of_another_abi_version_are_refused_with_what_to_do() {
    let dir = PinDir::new("abi");
    loader::load(&dir.layout, object::OBJECT).expect("load");
    let data = MapData::from_pin(dir.layout.map(map_names::META)).unwrap();
    let mut meta: Array<MapData, Meta> =
        Array::try_from(Map::from_map_data(data).unwrap()).unwrap();
    meta.set(
        0,
        Meta {
            abi_version: ABI_VERSION + 1,
            ..Meta::default()
        },
        0,
    )
    .unwrap();

    let err = loader::load(&dir.layout, object::OBJECT).expect_err("other ABI refused");
    assert!(
        matches!(err, Error::AbiMismatch { found, expected, .. } if found == ABI_VERSION + 1 && expected == ABI_VERSION)
    );
    assert!(err.to_string().contains("weir-node uninstall"), "{err}");
    assert!(matches!(
        loader::check_pins(&dir.layout),
        Err(Error::AbiMismatch { .. })
    ));
}

#[test]
fn missing_pins_mean_not_loaded() {
    let dir = PinDir::new("missing");
    let err = loader::check_pins(&dir.layout).expect_err("nothing is pinned");
    assert!(err.is_not_loaded(), "{err}");
    assert!(EndpointMap::open(&dir.layout).is_err());
}

/// Runs `f` on a thread of its own inside a new network namespace holding a
/// veth pair `a`/`b`; the namespace dies with the thread.
fn in_netns_with_veth<T: Send + 'static>(f: impl FnOnce(&str) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let ok = Command::new("ip")
            .args([
                "link", "add", "wrtest0", "type", "veth", "peer", "name", "wrtest1",
            ])
            .status()
            .expect("run ip")
            .success();
        assert!(ok, "create veth");
        assert!(
            Command::new("ip")
                .args(["link", "set", "wrtest0", "up"])
                .status()
                .unwrap()
                .success()
        );
        f("wrtest0")
    })
    .join()
    .expect("netns thread")
}

#[test]
fn tcx_attach_pins_links_and_an_upgrade_moves_them_to_the_new_programs() {
    let dir = PinDir::new("tcx");
    let layout = dir.layout.clone();
    in_netns_with_veth(move |ifname| {
        loader::load(&layout, object::OBJECT).expect("load");
        attach::attach_interface(&layout, ifname, AttachMode::Tcx).expect("attach");
        for prog in program_names::POD {
            assert!(layout.link(ifname, prog).exists(), "{prog} link pinned");
        }
        let ids = loader::pinned_program_ids(&layout).unwrap();
        let (ingress, egress) = attach::attached_program_ids(ifname).unwrap();
        assert_eq!(ingress, vec![ids[0].1], "from_pod on ingress");
        assert_eq!(egress, vec![ids[1].1], "to_pod on egress");

        // Upgrade: a new load relinks the interface to the new programs.
        let report = loader::load(&layout, object::OBJECT).expect("reload");
        assert_eq!(report.relinked_interfaces, vec![ifname.to_string()]);
        let new_ids = loader::pinned_program_ids(&layout).unwrap();
        assert_ne!(ids, new_ids);
        let (ingress, egress) = attach::attached_program_ids(ifname).unwrap();
        assert_eq!(
            ingress,
            vec![new_ids[0].1],
            "exactly one program, the new one"
        );
        assert_eq!(egress, vec![new_ids[1].1]);

        attach::detach_interface(&layout, ifname).expect("detach");
        // The kernel frees an unpinned link asynchronously; give it a moment.
        let mut attached = attach::attached_program_ids(ifname).unwrap();
        for _ in 0..100 {
            if attached.0.is_empty() && attached.1.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            attached = attach::attached_program_ids(ifname).unwrap();
        }
        assert_eq!(attached, (vec![], vec![]), "detached");
        assert!(!layout.interface_links(ifname).exists());
    });
}

fn tc_filters(ifname: &str, hook: &str) -> String {
    let out = Command::new("tc")
        .args(["filter", "show", "dev", ifname, hook])
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn clsact_attach_installs_filters_and_detach_removes_them() {
    let dir = PinDir::new("clsact");
    let layout = dir.layout.clone();
    in_netns_with_veth(move |ifname| {
        loader::load(&layout, object::OBJECT).expect("load");
        attach::attach_interface(&layout, ifname, AttachMode::Clsact).expect("attach");
        let ingress = tc_filters(ifname, "ingress");
        let egress = tc_filters(ifname, "egress");
        assert!(
            ingress.contains("from_pod") && ingress.contains("direct-action"),
            "{ingress}"
        );
        assert!(
            egress.contains("to_pod") && egress.contains("direct-action"),
            "{egress}"
        );

        let report = loader::load(&layout, object::OBJECT).expect("reload");
        assert_eq!(report.relinked_interfaces, vec![ifname.to_string()]);
        let new_ids = loader::pinned_program_ids(&layout).unwrap();
        let ingress = tc_filters(ifname, "ingress");
        assert!(
            ingress.contains(&format!("id {}", new_ids[0].1)),
            "replaced in place: {ingress}"
        );
        assert_eq!(
            ingress.matches("handle 0x5752").count(),
            1,
            "one filter only: {ingress}"
        );

        attach::detach_interface(&layout, ifname).expect("detach");
        assert!(!tc_filters(ifname, "ingress").contains("from_pod"));
        assert!(!tc_filters(ifname, "egress").contains("to_pod"));
    });
}
