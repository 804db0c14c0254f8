//! Model-based property tests: random sequences of allocate / release / gc
//! (and, on disk, reopening the state) against a model that predicts every
//! answer exactly, including which address round-robin hands out next.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use common::{assert_sound, ip, range, tempdir};
use proptest::prelude::*;
use weir_ipam::{DiskStore, Ipam, Key, MemStore, Pool, RangeConfig, Store};

const KEYS: u8 = 8;

/// Dual-stack, small enough to run out: set 0 has two ranges and a gateway
/// inside the first (8 addresses), set 1 one range with a gateway (5).
fn pool() -> Pool {
    Pool::from_config(&[
        vec![
            RangeConfig {
                gateway: Some(ip("10.0.0.1")),
                ..range("10.0.0.0/29")
            },
            RangeConfig {
                range_start: Some(ip("10.0.1.10")),
                range_end: Some(ip("10.0.1.12")),
                ..range("10.0.1.0/24")
            },
        ],
        vec![RangeConfig {
            range_start: Some(ip("fd00::2")),
            gateway: Some(ip("fd00::4")),
            ..range("fd00::/125")
        }],
    ])
    .unwrap()
}

/// What `pool()` may hand out, spelled out by hand rather than computed:
/// not 10.0.0.0 (network), .1 (gateway), .7 (broadcast), nothing of
/// 10.0.1.0/24 outside [.10, .12]; not fd00:: (network) or below
/// rangeStart, not fd00::4 (gateway).
const ALLOWED: [&[&str]; 2] = [
    &[
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.6",
        "10.0.1.10",
        "10.0.1.11",
        "10.0.1.12",
    ],
    &["fd00::2", "fd00::3", "fd00::5", "fd00::6", "fd00::7"],
];

fn key(k: u8) -> Key {
    Key::new(
        format!("c{k}"),
        if k.is_multiple_of(2) { "eth0" } else { "net1" },
    )
}

#[derive(Clone, Debug)]
enum Op {
    Allocate(u8),
    Release(u8),
    /// Keys whose bit is set are valid.
    Gc(u8),
    /// Drop the `Ipam` and open the state again (disk only).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..KEYS).prop_map(Op::Allocate),
        3 => (0..KEYS).prop_map(Op::Release),
        1 => any::<u8>().prop_map(Op::Gc),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    held: BTreeMap<Key, Vec<IpAddr>>,
    last: BTreeMap<usize, IpAddr>,
}

impl Model {
    fn taken(&self) -> BTreeSet<IpAddr> {
        self.held.values().flatten().copied().collect()
    }

    /// What round-robin must hand out next, per set; None if a set is full.
    fn next(&self, pool: &Pool) -> Option<Vec<IpAddr>> {
        let taken = self.taken();
        pool.sets()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.candidates_after(self.last.get(&i).copied())
                    .find(|ip| !taken.contains(ip))
            })
            .collect()
    }
}

fn ips(a: &weir_ipam::Allocation) -> Vec<IpAddr> {
    a.ips.iter().map(|x| x.address.ip()).collect()
}

fn run<S: Store>(mut ipam: Ipam<S>, ops: &[Op], reopen: impl Fn(Ipam<S>) -> Ipam<S>) {
    let pool = pool();
    for (i, set) in pool.sets().iter().enumerate() {
        let all: Vec<String> = set
            .candidates_after(None)
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(all, ALLOWED[i]);
    }
    let mut model = Model::default();
    let labels = BTreeMap::from([("pod".to_string(), "ns/name".to_string())]);
    for op in ops {
        match *op {
            Op::Allocate(k) => {
                let key = key(k);
                let got = ipam.allocate(&key, &labels);
                match (model.held.get(&key), model.next(&pool)) {
                    (Some(held), _) => {
                        let a = got.expect("allocating a held key again");
                        assert_eq!(&ips(&a), held, "same key, same addresses");
                    }
                    (None, Some(next)) => {
                        let a = got.expect("free addresses remain");
                        for (i, x) in a.ips.iter().enumerate() {
                            let s = x.address.ip().to_string();
                            assert!(ALLOWED[i].contains(&s.as_str()), "{s} handed out");
                        }
                        assert_eq!(ips(&a), next, "round-robin after {:?}", model.last);
                        for (x, &want) in a.ips.iter().zip(&next) {
                            assert_eq!(x, &pool.describe(want));
                        }
                        assert_eq!(a.labels, labels);
                        for (i, &ip) in next.iter().enumerate() {
                            model.last.insert(i, ip);
                        }
                        model.held.insert(key, next);
                    }
                    (None, None) => {
                        let e = got.expect_err("a set is full");
                        assert!(e.is_exhausted(), "{e}");
                        let msg = e.to_string();
                        assert!(
                            msg.contains("8 of 8 allocated") || msg.contains("5 of 5 allocated"),
                            "{msg}"
                        );
                    }
                }
            }
            Op::Release(k) => {
                let key = key(k);
                let got = ipam.release(&key).unwrap();
                let want = model.held.remove(&key);
                assert_eq!(got.as_ref().map(ips), want);
                assert_eq!(ipam.release(&key).unwrap(), None, "release is idempotent");
            }
            Op::Gc(mask) => {
                let valid: Vec<Key> = (0..KEYS)
                    .filter(|k| mask & (1 << k) != 0)
                    .map(key)
                    .collect();
                let mut freed: Vec<(Key, Vec<IpAddr>)> = ipam
                    .gc(&valid)
                    .unwrap()
                    .iter()
                    .map(|a| (a.key.clone(), ips(a)))
                    .collect();
                freed.sort();
                let (keep, gone): (BTreeMap<_, _>, BTreeMap<_, _>) =
                    std::mem::take(&mut model.held)
                        .into_iter()
                        .partition(|(k, _)| valid.contains(k));
                assert_eq!(freed, gone.into_iter().collect::<Vec<_>>());
                model.held = keep;
            }
            Op::Reopen => ipam = reopen(ipam),
        }

        // After every step the state is exactly the model.
        let list = ipam.list().unwrap();
        assert_sound(&pool, &list);
        let listed: BTreeMap<Key, Vec<IpAddr>> =
            list.iter().map(|a| (a.key.clone(), ips(a))).collect();
        assert_eq!(listed, model.held);
        for k in 0..KEYS {
            let got = ipam.get(&key(k)).unwrap();
            assert_eq!(got.as_ref().map(ips).as_ref(), model.held.get(&key(k)));
        }
        let status = ipam.status().unwrap();
        for (i, s) in status.sets.iter().enumerate() {
            assert_eq!(s.allocated, model.held.len() as u128, "set {i}: {status:?}");
        }
        assert_eq!(status.can_allocate(), model.next(&pool).is_some());
        assert_eq!(ipam.check().unwrap(), Default::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(Ipam::with_store(MemStore::new(), pool()), &ops, |ipam| ipam);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn disk_store_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempdir();
        let state = dir.path().join("weir");
        let open = || Ipam::with_store(DiskStore::open(&state).unwrap(), pool());
        run(open(), &ops, |old| { drop(old); open() });
    }
}
