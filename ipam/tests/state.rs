//! The disk state: what an operator sees, what allocation does with it, and
//! every kind of damage giving an error that names the file.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{entries, ip, range, tempdir};
use weir_ipam::{
    Allocation, DiskStore, EXHAUSTED_CODE, Ipam, IpamError, Key, Pool, RangeConfig, Store,
};

fn dual_stack() -> Pool {
    Pool::from_config(&[
        vec![RangeConfig {
            gateway: Some(ip("10.1.0.1")),
            ..range("10.1.0.0/24")
        }],
        vec![range("fd01::/120")],
    ])
    .unwrap()
}

fn open(dir: &Path) -> Ipam {
    Ipam::open(dir, dual_stack()).unwrap()
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([("k8s_pod".to_string(), "default/web-0".to_string())])
}

#[track_caller]
fn corrupt(result: Result<impl std::fmt::Debug, IpamError>, path: &Path, reason_has: &str) {
    match result {
        Err(IpamError::CorruptState { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(
                reason.contains(reason_has),
                "{reason:?} lacks {reason_has:?}"
            );
        }
        other => panic!("expected CorruptState on {}, got {other:?}", path.display()),
    }
}

#[track_caller]
fn io_error(result: Result<impl std::fmt::Debug, IpamError>, path: &Path) {
    match result {
        Err(e @ IpamError::Io { .. }) => {
            let IpamError::Io { path: p, .. } = &e else {
                unreachable!()
            };
            assert_eq!(p, path);
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected Io on {}, got {other:?}", path.display()),
    }
}

#[test]
fn allocation_is_idempotent_readable_and_released_once() {
    let tmp = tempdir();
    let dir = tmp.path().join("weir");
    let ipam = open(&dir);
    let key = Key::new("0123abcd", "eth0");
    let a = ipam.allocate(&key, &labels()).unwrap();
    assert_eq!(
        a.ips[0].address.to_string(),
        "10.1.0.2/24",
        "skips network and gateway"
    );
    assert_eq!(a.ips[0].gateway, Some(ip("10.1.0.1")));
    assert_eq!(a.ips[1].address.to_string(), "fd01::1/120");
    assert_eq!(a.ips[1].gateway, None);
    assert_eq!(a.labels, labels());
    assert_eq!(
        ipam.allocate(&key, &BTreeMap::new()).unwrap(),
        a,
        "same key, same answer"
    );
    assert_eq!(open(&dir).get(&key).unwrap(), Some(a.clone()));

    // What an operator sees.
    let owner = fs::read_to_string(dir.join("ips/10.1.0.2")).unwrap();
    assert_eq!(
        owner.trim(),
        r#"{"containerId":"0123abcd","ifname":"eth0"}"#
    );
    assert!(dir.join("ips/fd01::1").is_file());
    let record = fs::read_to_string(dir.join("keys/0123abcd+eth0.json")).unwrap();
    assert!(
        record.contains("default/web-0") && record.contains("10.1.0.2/24"),
        "{record}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved.0")).unwrap(),
        "10.1.0.2\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("last_reserved.1")).unwrap(),
        "fd01::1\n"
    );

    assert_eq!(ipam.release(&key).unwrap(), Some(a));
    assert_eq!(ipam.release(&key).unwrap(), None);
    assert_eq!(ipam.get(&key).unwrap(), None);
    assert_eq!(entries(&dir.join("ips")), Vec::<String>::new());
    assert_eq!(entries(&dir.join("keys")), Vec::<String>::new());
}

#[test]
fn a_released_address_is_not_reused_at_once() {
    let tmp = tempdir();
    let ipam = open(tmp.path());
    let first = ipam.allocate(&Key::new("a", "eth0"), &labels()).unwrap();
    ipam.release(&Key::new("a", "eth0")).unwrap();
    let second = ipam.allocate(&Key::new("b", "eth0"), &labels()).unwrap();
    assert_eq!(second.ips[0].address.ip(), ip("10.1.0.3"));
    assert_eq!(second.ips[1].address.ip(), ip("fd01::2"));
    assert_ne!(first.ips, second.ips);
}

#[test]
fn exhaustion_names_the_count_and_release_makes_room() {
    let tmp = tempdir();
    let pool = Pool::from_config(&[vec![range("10.9.0.0/30")]]).unwrap();
    let ipam = Ipam::open(tmp.path(), pool).unwrap();
    ipam.allocate(&Key::new("a", "eth0"), &labels()).unwrap();
    ipam.allocate(&Key::new("b", "eth0"), &labels()).unwrap();
    assert!(!ipam.status().unwrap().can_allocate());
    let e = ipam
        .allocate(&Key::new("c", "eth0"), &labels())
        .unwrap_err();
    assert!(e.is_exhausted() && !e.is_invalid_config());
    assert!(e.to_string().contains("2 of 2 allocated"), "{e}");
    assert!(e.to_string().contains("10.9.0.0/30"), "{e}");
    assert_eq!(EXHAUSTED_CODE, 100);
    assert!(
        ipam.get(&Key::new("c", "eth0")).unwrap().is_none(),
        "a failed ADD holds nothing"
    );

    let freed = ipam.release(&Key::new("a", "eth0")).unwrap().unwrap();
    let status = ipam.status().unwrap();
    assert!(status.can_allocate());
    assert_eq!((status.sets[0].allocated, status.sets[0].capacity), (1, 2));
    let c = ipam.allocate(&Key::new("c", "eth0"), &labels()).unwrap();
    assert_eq!(c.ips, freed.ips, "the only free address");
}

#[test]
fn gc_keeps_exactly_the_valid_keys_and_frees_hand_made_leaks() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    let keys: Vec<Key> = (0..4).map(|i| Key::new(format!("c{i}"), "eth0")).collect();
    for k in &keys {
        ipam.allocate(k, &labels()).unwrap();
    }
    // A reservation nobody's record lists (written by hand).
    fs::write(
        dir.join("ips/10.1.0.200"),
        r#"{"containerId":"ghost","ifname":"eth0"}"#,
    )
    .unwrap();
    let report = ipam.check().unwrap();
    assert_eq!(
        report.orphans,
        vec![(ip("10.1.0.200"), Key::new("ghost", "eth0"))]
    );
    assert!(!report.is_clean());

    let freed = ipam.gc(&keys[..2]).unwrap();
    let freed_keys: Vec<&Key> = freed.iter().map(|a| &a.key).collect();
    assert_eq!(freed_keys, [&keys[2], &keys[3], &Key::new("ghost", "eth0")]);
    assert_eq!(freed[0].labels, labels());
    let left: Vec<Key> = ipam.list().unwrap().into_iter().map(|a| a.key).collect();
    assert_eq!(left, keys[..2]);
    assert_eq!(ipam.check().unwrap(), Default::default());
    assert_eq!(ipam.gc(&keys[..2]).unwrap(), vec![], "nothing more to free");
}

#[test]
fn an_interrupted_allocation_is_finished_by_a_retry_and_tidied_by_gc() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    let key = Key::new("retry", "eth0");
    // What a kill between writing the record and reserving leaves.
    let store = DiskStore::open(dir).unwrap();
    let intent = Allocation {
        key: key.clone(),
        ips: vec![
            ipam.pool().describe(ip("10.1.0.7")),
            ipam.pool().describe(ip("fd01::7")),
        ],
        labels: labels(),
    };
    store.put_record(&intent).unwrap();
    assert!(store.reserve(ip("10.1.0.7"), &key).unwrap());
    let report = ipam.check().unwrap();
    assert!(report.is_clean());
    assert_eq!(report.dangling, vec![(key.clone(), ip("fd01::7"))]);
    assert_eq!(ipam.get(&key).unwrap().unwrap().ips, intent.ips[..1]);

    // The retry keeps what the key holds and completes the rest.
    let a = ipam.allocate(&key, &labels()).unwrap();
    assert_eq!(a.ips[0], intent.ips[0]);
    assert_eq!(a.ips.len(), 2);
    assert_eq!(ipam.check().unwrap(), Default::default());

    // A second interrupted key, never retried: gc trims its record.
    let other = Key::new("other", "eth0");
    store
        .put_record(&Allocation {
            key: other.clone(),
            ips: vec![ipam.pool().describe(ip("10.1.0.9"))],
            labels: labels(),
        })
        .unwrap();
    assert_eq!(ipam.gc(&[key.clone(), other.clone()]).unwrap(), vec![]);
    assert_eq!(ipam.check().unwrap(), Default::default());
    assert!(!dir.join("keys/other+eth0.json").exists());
}

#[test]
fn leftover_temp_files_are_harmless_and_tidied() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    let a = ipam.allocate(&Key::new("a", "eth0"), &labels()).unwrap();
    let held = dir.join("ips/10.1.0.2");
    let before = fs::read(&held).unwrap();
    // A kill between link and unlink leaves .tmp as a second name of a live
    // reservation: the next write must not truncate it.
    fs::hard_link(&held, dir.join("ips/.tmp")).unwrap();
    fs::write(dir.join("keys/.tmp"), "{ half a rec").unwrap();
    fs::write(dir.join(".tmp"), "10.1.").unwrap();
    assert_eq!(ipam.list().unwrap(), vec![a.clone()]);
    ipam.allocate(&Key::new("b", "eth0"), &labels()).unwrap();
    assert_eq!(fs::read(&held).unwrap(), before);
    fs::write(dir.join("keys/.tmp"), "{ half a rec").unwrap();
    ipam.gc(&[Key::new("a", "eth0"), Key::new("b", "eth0")])
        .unwrap();
    assert!(!dir.join("keys/.tmp").exists() && !dir.join("ips/.tmp").exists());
    assert_eq!(ipam.get(&Key::new("a", "eth0")).unwrap(), Some(a));
}

#[test]
fn truncated_garbage_and_empty_files_are_corrupt_state() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    let key = Key::new("victim", "eth0");
    let a = ipam.allocate(&key, &labels()).unwrap();

    // A truncated reservation: listing and gc refuse, naming it; allocation
    // treats the address as taken, never hands it out again.
    let ip_file = dir.join("ips/10.1.0.2");
    let full = fs::read(&ip_file).unwrap();
    fs::write(&ip_file, &full[..full.len() / 2]).unwrap();
    corrupt(ipam.list(), &ip_file, "unreadable JSON");
    corrupt(
        ipam.gc(std::slice::from_ref(&key)),
        &ip_file,
        "unreadable JSON",
    );
    corrupt(ipam.get(&key), &ip_file, "unreadable JSON");
    corrupt(ipam.check(), &ip_file, "unreadable JSON");
    let b = ipam.allocate(&Key::new("b", "eth0"), &labels()).unwrap();
    assert_ne!(b.ips[0], a.ips[0]);
    fs::write(&ip_file, b"").unwrap();
    corrupt(ipam.list(), &ip_file, "empty file");
    fs::write(&ip_file, &full).unwrap();

    // A garbage record.
    let record = dir.join("keys/victim+eth0.json");
    fs::write(&record, b"\x00\xffnot json").unwrap();
    corrupt(ipam.get(&key), &record, "unreadable JSON");
    corrupt(ipam.allocate(&key, &labels()), &record, "unreadable JSON");
    corrupt(ipam.release(&key), &record, "unreadable JSON");
    corrupt(ipam.list(), &record, "unreadable JSON");
    // Someone else's record in this key's file.
    let other = fs::read(dir.join("keys/b+eth0.json")).unwrap();
    fs::write(&record, &other).unwrap();
    corrupt(ipam.get(&key), &record, "record of b/eth0");
    corrupt(ipam.list(), &record, "belongs in another file");

    // A garbage cursor.
    let cursor = dir.join("last_reserved.1");
    fs::write(&cursor, "fd01::zz\n").unwrap();
    corrupt(
        ipam.allocate(&Key::new("c", "eth0"), &labels()),
        &cursor,
        "not an IP address",
    );
    fs::write(&cursor, b"\xff\xfe").unwrap();
    corrupt(
        ipam.allocate(&Key::new("c", "eth0"), &labels()),
        &cursor,
        "not UTF-8",
    );
}

#[test]
fn stray_names_are_corrupt_state() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    ipam.allocate(&Key::new("a", "eth0"), &labels()).unwrap();
    // A non-canonical name would dodge the existence check of 10.1.0.3.
    let odd = dir.join("ips/10.1.0.03");
    fs::write(&odd, r#"{"containerId":"x","ifname":"eth0"}"#).unwrap();
    corrupt(ipam.list(), &odd, "canonical form");
    corrupt(ipam.status(), &odd, "canonical form");
    fs::remove_file(&odd).unwrap();
    let stray = dir.join("keys/notes.txt");
    fs::write(&stray, "hello").unwrap();
    corrupt(ipam.list(), &stray, "does not end in .json");
}

#[test]
fn unreadable_files_are_io_errors_naming_them() {
    // Tests run as root, who can read any mode: a directory where a file
    // belongs is unreadable for everyone.
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    let key = Key::new("a", "eth0");
    ipam.allocate(&key, &labels()).unwrap();

    let ip_file = dir.join("ips/10.1.0.2");
    fs::remove_file(&ip_file).unwrap();
    fs::create_dir(&ip_file).unwrap();
    io_error(ipam.list(), &ip_file);
    io_error(ipam.get(&key), &ip_file);
    io_error(ipam.release(&key), &ip_file);
    // Still never handed out.
    let b = ipam.allocate(&Key::new("b", "eth0"), &labels()).unwrap();
    assert_eq!(b.ips[0].address.ip(), ip("10.1.0.3"));
    fs::remove_dir(&ip_file).unwrap();

    let record = dir.join("keys/a+eth0.json");
    fs::remove_file(&record).unwrap();
    fs::create_dir(&record).unwrap();
    io_error(ipam.get(&key), &record);
    io_error(ipam.allocate(&key, &labels()), &record);
    fs::remove_dir(&record).unwrap();

    let cursor = dir.join("last_reserved.0");
    fs::remove_file(&cursor).unwrap();
    fs::create_dir(&cursor).unwrap();
    io_error(ipam.allocate(&Key::new("c", "eth0"), &labels()), &cursor);
    fs::remove_dir(&cursor).unwrap();

    let lock = dir.join("lock");
    fs::remove_file(&lock).unwrap();
    fs::create_dir(&lock).unwrap();
    match ipam.list() {
        Err(IpamError::Lock { path, .. }) => assert_eq!(path, lock),
        other => panic!("expected Lock, got {other:?}"),
    }

    let not_a_dir: PathBuf = dir.join("plain-file");
    fs::write(&not_a_dir, "").unwrap();
    io_error(
        Ipam::open(&not_a_dir.join("weir"), dual_stack()).map(|_| ()),
        &not_a_dir.join("weir"),
    );
}

#[test]
fn keys_of_any_spelling_get_their_own_file() {
    let tmp = tempdir();
    let dir = tmp.path();
    let ipam = open(dir);
    let keys = [
        Key::new("abc", "eth0"),
        Key::new("abc+eth0", "x"),
        Key::new("../../etc", "passwd"),
        Key::new(".hidden", "eth0"),
        Key::new("ünï/côde", "net%1"),
    ];
    for k in &keys {
        ipam.allocate(k, &labels()).unwrap();
    }
    let names = entries(&dir.join("keys"));
    assert_eq!(names.len(), keys.len());
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('.') && !n.contains('/')),
        "{names:?}"
    );
    let listed: Vec<Key> = ipam.list().unwrap().into_iter().map(|a| a.key).collect();
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(listed, sorted);
    for k in &keys {
        assert!(ipam.release(k).unwrap().is_some());
    }
    for bad in [
        Key::new("", "eth0"),
        Key::new("abc", ""),
        Key::new("x".repeat(300), "eth0"),
    ] {
        let e = ipam.allocate(&bad, &labels()).unwrap_err();
        assert!(matches!(e, IpamError::InvalidKey { .. }), "{e}");
    }
}

#[test]
fn threads_sharing_one_ipam_never_share_an_address() {
    // flock is per open file description: each operation opens the lock
    // anew, so threads of one process exclude each other too.
    let tmp = tempdir();
    let pool = Pool::from_config(&[vec![range("10.7.0.0/28")]]).unwrap();
    let ipam = Ipam::open(tmp.path(), pool).unwrap();
    let held = std::sync::Mutex::new(std::collections::BTreeSet::new());
    std::thread::scope(|s| {
        for t in 0..8 {
            let (ipam, held) = (&ipam, &held);
            s.spawn(move || {
                for i in 0..100 {
                    let key = Key::new(format!("t{t}-{i}"), "eth0");
                    let a = ipam.allocate(&key, &BTreeMap::new()).unwrap();
                    let ip = a.ips[0].address.ip();
                    assert!(held.lock().unwrap().insert(ip), "{ip} handed out twice");
                    std::thread::yield_now();
                    assert!(held.lock().unwrap().remove(&ip));
                    assert_eq!(ipam.release(&key).unwrap(), Some(a));
                }
            });
        }
    });
    assert_eq!(ipam.list().unwrap(), vec![]);
}

#[test]
fn a_retry_after_the_ranges_changed_frees_what_the_pool_no_longer_has() {
    let tmp = tempdir();
    let key = Key::new("moved", "eth0");
    let old = open(tmp.path()).allocate(&key, &labels()).unwrap();
    assert_eq!(old.ips.len(), 2);

    let pool = Pool::from_config(&[vec![range("10.2.0.0/24")]]).unwrap();
    let ipam = Ipam::open(tmp.path(), pool).unwrap();
    let report = ipam.check().unwrap();
    assert_eq!(report.outside_pool.len(), 2, "{report:?}");
    let new = ipam.allocate(&key, &labels()).unwrap();
    assert_eq!(new.ips.len(), 1);
    assert_eq!(new.ips[0].address.to_string(), "10.2.0.1/24");
    assert_eq!(ipam.get(&key).unwrap(), Some(new.clone()));
    assert_eq!(ipam.check().unwrap(), Default::default());
    assert_eq!(entries(&tmp.path().join("ips")), ["10.2.0.1"]);
    assert_eq!(ipam.release(&key).unwrap(), Some(new));
}

/// A MemStore whose disk "fails" when reserving one address.
struct FailingStore {
    inner: weir_ipam::MemStore,
    fail: std::net::IpAddr,
}

impl Store for FailingStore {
    fn locked<T>(
        &self,
        mode: weir_ipam::LockMode,
        f: impl FnOnce() -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        self.inner.locked(mode, f)
    }
    fn reservation_path(&self, ip: std::net::IpAddr) -> PathBuf {
        self.inner.reservation_path(ip)
    }
    fn owner(&self, ip: std::net::IpAddr) -> Result<Option<Key>, IpamError> {
        self.inner.owner(ip)
    }
    fn is_reserved(&self, ip: std::net::IpAddr) -> Result<bool, IpamError> {
        self.inner.is_reserved(ip)
    }
    fn reserve(&self, ip: std::net::IpAddr, key: &Key) -> Result<bool, IpamError> {
        if ip == self.fail {
            return Err(IpamError::Io {
                path: self.reservation_path(ip),
                source: std::io::Error::other("disk on fire"),
            });
        }
        self.inner.reserve(ip, key)
    }
    fn unreserve(&self, ip: std::net::IpAddr) -> Result<(), IpamError> {
        self.inner.unreserve(ip)
    }
    fn reserved(&self) -> Result<Vec<std::net::IpAddr>, IpamError> {
        self.inner.reserved()
    }
    fn record(&self, key: &Key) -> Result<Option<Allocation>, IpamError> {
        self.inner.record(key)
    }
    fn put_record(&self, a: &Allocation) -> Result<(), IpamError> {
        self.inner.put_record(a)
    }
    fn remove_record(&self, key: &Key) -> Result<(), IpamError> {
        self.inner.remove_record(key)
    }
    fn records(&self) -> Result<Vec<Allocation>, IpamError> {
        self.inner.records()
    }
    fn last_reserved(&self, set: usize) -> Result<Option<std::net::IpAddr>, IpamError> {
        self.inner.last_reserved(set)
    }
    fn set_last_reserved(&self, set: usize, ip: std::net::IpAddr) -> Result<(), IpamError> {
        self.inner.set_last_reserved(set, ip)
    }
    fn sync(&self) -> Result<(), IpamError> {
        self.inner.sync()
    }
    fn tidy(&self) -> Result<(), IpamError> {
        self.inner.tidy()
    }
}

#[test]
fn a_failed_allocation_gives_back_what_it_took() {
    let store = FailingStore {
        inner: weir_ipam::MemStore::new(),
        fail: ip("fd01::2"),
    };
    let ipam = Ipam::with_store(store, dual_stack());
    let first = ipam.allocate(&Key::new("a", "eth0"), &labels()).unwrap();
    assert_eq!(first.ips[1].address.ip(), ip("fd01::1"));
    // The next allocation takes 10.1.0.3, then fails on fd01::2.
    let e = ipam
        .allocate(&Key::new("b", "eth0"), &labels())
        .unwrap_err();
    assert!(matches!(e, IpamError::Io { .. }), "{e}");
    assert_eq!(ipam.get(&Key::new("b", "eth0")).unwrap(), None);
    assert!(
        ipam.store()
            .record(&Key::new("b", "eth0"))
            .unwrap()
            .is_none()
    );
    assert_eq!(ipam.list().unwrap(), vec![first]);
    assert_eq!(ipam.check().unwrap(), Default::default());
    assert_eq!(ipam.status().unwrap().sets[0].allocated, 1);
}
