//! Many processes on one state directory, and processes killed with SIGKILL
//! at random instants: the state must stay loadable, free of duplicates and
//! free of leaks. The workers are the `weir-ipam-stress` helper binary.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Rng, assert_no_duplicate, assert_sound, entries, range, tempdir};
use weir_ipam::{Ipam, Key, Pool, RangeConfig};

const HELPER: &str = env!("CARGO_BIN_EXE_weir-ipam-stress");

fn ranges(v4: &str, v6: &str) -> Vec<Vec<RangeConfig>> {
    vec![vec![range(v4)], vec![range(v6)]]
}

fn spawn(dir: &Path, ranges: &[Vec<RangeConfig>], worker: u32, extra: &[&str]) -> Child {
    Command::new(HELPER)
        .arg("--dir")
        .arg(dir)
        .arg("--ranges")
        .arg(serde_json::to_string(ranges).unwrap())
        .arg("--worker")
        .arg(worker.to_string())
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning weir-ipam-stress")
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

#[test]
fn sixteen_processes_allocating_and_releasing_leave_no_duplicate_and_no_leak() {
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let claims = tmp.path().join("claims");
    std::fs::create_dir(&claims).unwrap();
    // Small sets, so the round-robin cursor wraps many times and addresses
    // are handed from one process to another constantly.
    let ranges = ranges("10.20.0.0/26", "fd20::/122");
    let started = Instant::now();
    let mut children: Vec<Child> = (0..16)
        .map(|w| {
            spawn(
                &state,
                &ranges,
                w,
                &[
                    "--cycles",
                    "200",
                    "--hold",
                    "2",
                    "--claims",
                    claims.to_str().unwrap(),
                ],
            )
        })
        .collect();
    for (w, child) in children.iter_mut().enumerate() {
        let status = child.wait().unwrap();
        let err = stderr_of(child);
        assert!(status.success(), "worker {w}: {status}: {err}");
    }
    eprintln!("16 x 200 cycles in {:?}", started.elapsed());

    let pool = Pool::from_config(&ranges).unwrap();
    let ipam = Ipam::open(&state, pool).unwrap();
    assert_eq!(ipam.list().unwrap(), vec![], "leaked allocations");
    let report = ipam.check().unwrap();
    assert_eq!(report, Default::default());
    let status = ipam.status().unwrap();
    assert!(status.sets.iter().all(|s| s.allocated == 0), "{status:?}");
    assert_eq!(entries(&state.join("ips")), Vec::<String>::new());
    assert_eq!(entries(&state.join("keys")), Vec::<String>::new());
    assert_eq!(entries(&claims), Vec::<String>::new());
    // Every address went round: 3200 allocations over ~60 addresses per set.
    assert_eq!(
        entries(&state),
        ["ips", "keys", "last_reserved.0", "last_reserved.1", "lock"]
    );
}

/// Starts a looping worker and waits until its state is open.
fn spawn_looping(dir: &Path, ranges: &[Vec<RangeConfig>], worker: u32) -> Child {
    let mut child = spawn(dir, ranges, worker, &["--cycles", "0", "--hold", "3"]);
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        panic!("worker {worker} did not start: {}", stderr_of(&mut child));
    }
    child
}

#[test]
fn kill_9_at_random_instants_leaves_a_sound_state() {
    const KILLS: usize = 200;
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let ranges = ranges("10.30.0.0/25", "fd30::/121");
    let pool = Pool::from_config(&ranges).unwrap();
    let mut rng = Rng::from_env("kill_9_at_random_instants_leaves_a_sound_state");
    let started = Instant::now();

    let mut kills = 0;
    let mut round = 0u32;
    let mut interrupted = 0; // kills that left a half-done allocation or release
    let mut repaired = 0;
    while kills < KILLS {
        // Two workers at once, so kills also land while one waits for the
        // other's lock.
        let mut children = [
            spawn_looping(&state, &ranges, 2 * round),
            spawn_looping(&state, &ranges, 2 * round + 1),
        ];
        for child in &mut children {
            sleep(Duration::from_micros(rng.below(12_000)));
            match child.try_wait().unwrap() {
                None => child.kill().unwrap(),
                Some(status) => panic!("worker exited by itself: {status}: {}", stderr_of(child)),
            }
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(9), "{}", stderr_of(child));
            kills += 1;
        }

        // The state loads, holds nothing twice, and leaks nothing.
        let ipam = Ipam::open(&state, pool.clone()).unwrap();
        let report = ipam.check().unwrap();
        assert!(report.is_clean(), "after kill {kills}: {report:?}");
        assert!(report.outside_pool.is_empty(), "{report:?}");
        let list = ipam.list().unwrap();
        // A kill mid-allocation leaves a key holding fewer addresses than
        // sets; the rest must still be sound.
        let complete: Vec<_> = list
            .iter()
            .filter(|a| a.ips.len() == pool.sets().len())
            .cloned()
            .collect();
        assert_sound(&pool, &complete);
        let all: Vec<_> = list
            .iter()
            .flat_map(|a| &a.ips)
            .map(|x| x.address.ip())
            .collect();
        let unique: BTreeSet<_> = all.iter().collect();
        assert_eq!(
            all.len(),
            unique.len(),
            "duplicate after kill {kills}: {list:?}"
        );

        // What a kill interrupted can be finished (the runtime retries ADD)
        // or undone (DEL).
        let half_done: BTreeSet<Key> = report.dangling.iter().map(|(k, _)| k.clone()).collect();
        interrupted += usize::from(!half_done.is_empty());
        for key in half_done {
            repaired += 1;
            if rng.below(2) == 0 {
                let a = ipam.allocate(&key, &Default::default()).unwrap();
                assert_eq!(a.ips.len(), pool.sets().len(), "{a:?}");
                assert_eq!(ipam.get(&key).unwrap(), Some(a));
            } else {
                ipam.release(&key).unwrap();
                assert_eq!(ipam.get(&key).unwrap(), None);
            }
        }
        let report = ipam.check().unwrap();
        assert!(
            report.is_clean() && report.dangling.is_empty(),
            "{report:?}"
        );
        assert_sound(&pool, &ipam.list().unwrap());

        // What the killed workers held is released by gc.
        if round % 5 == 4 {
            let before = ipam.list().unwrap();
            let mut freed = ipam.gc(&[]).unwrap();
            freed.sort_by(|a, b| a.key.cmp(&b.key));
            assert_eq!(freed, before);
            assert_eq!(ipam.list().unwrap(), vec![]);
        }
        round += 1;
    }

    let ipam = Ipam::open(&state, pool.clone()).unwrap();
    ipam.gc(&[]).unwrap();
    assert_eq!(ipam.list().unwrap(), vec![]);
    assert_eq!(entries(&state.join("ips")), Vec::<String>::new());
    assert_eq!(entries(&state.join("keys")), Vec::<String>::new());
    eprintln!(
        "{kills} kills in {:?}; {interrupted} rounds interrupted an operation; {repaired} keys finished or undone",
        started.elapsed()
    );
}

#[test]
fn kill_9_during_gc_never_frees_a_valid_key() {
    const ROUNDS: u32 = 25;
    const KEYS: u32 = 300;
    let tmp = tempdir();
    let state = tmp.path().join("state");
    let ranges = ranges("10.40.0.0/22", "fd40::/118");
    let pool = Pool::from_config(&ranges).unwrap();
    let mut rng = Rng::from_env("kill_9_during_gc_never_frees_a_valid_key");
    let cli = env!("CARGO_BIN_EXE_weir-ipam");
    let labels = Default::default();
    let mut midway = 0;
    for round in 0..ROUNDS {
        let ipam = Ipam::open(&state, pool.clone()).unwrap();
        let keys: Vec<Key> = (0..KEYS)
            .map(|i| Key::new(format!("r{round}-{i}"), "eth0"))
            .collect();
        for k in &keys {
            ipam.allocate(k, &labels).unwrap();
        }
        let before = ipam.list().unwrap();
        // Keep every third key of this round; everything else goes.
        let keep: Vec<&Key> = keys.iter().step_by(3).collect();
        let mut child = Command::new(cli)
            .arg("--dir")
            .arg(&state)
            .arg("gc")
            .args(
                keep.iter()
                    .flat_map(|k| ["--keep".to_string(), k.to_string()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Most of a gc process's life is starting and reading the state:
        // wait until it frees its first address, then kill it at a random
        // instant of the freeing.
        let held = entries(&state.join("ips")).len();
        while child.try_wait().unwrap().is_none() && entries(&state.join("ips")).len() == held {
            sleep(Duration::from_micros(20));
        }
        sleep(Duration::from_micros(rng.below(4_000)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.signal() != Some(9) {
            assert!(status.success(), "gc: {status}: {}", stderr_of(&mut child));
        }

        let report = ipam.check().unwrap();
        assert!(report.is_clean(), "round {round}: {report:?}");
        // A key gc was freeing may hold one address of two.
        let after = ipam.list().unwrap();
        assert_no_duplicate(&pool, &after);
        let count =
            |list: &[weir_ipam::Allocation]| list.iter().map(|a| a.ips.len()).sum::<usize>();
        let freed = count(&before) - count(&after);
        midway += usize::from(freed > 0 && freed < 2 * (keys.len() - keep.len()));
        for k in &keep {
            let was = before.iter().find(|a| &a.key == *k).unwrap();
            assert_eq!(
                ipam.get(k).unwrap().as_ref(),
                Some(was),
                "gc freed valid {k}"
            );
        }
        // Finishing the job leaves exactly the kept keys.
        let keep: Vec<Key> = keep.into_iter().cloned().collect();
        ipam.gc(&keep).unwrap();
        let left: BTreeSet<Key> = ipam.list().unwrap().into_iter().map(|a| a.key).collect();
        assert_eq!(left, keep.into_iter().collect());
        assert_eq!(ipam.check().unwrap(), Default::default());
        ipam.gc(&[]).unwrap();
    }
    eprintln!("{midway} of {ROUNDS} gc runs killed while freeing");
    assert!(midway > 0, "no kill landed in the middle of a gc");
}
