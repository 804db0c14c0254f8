//! The runtime's parallelism and crashes against the real `weir` binary:
//! 20 concurrent ADDs get distinct addresses and 20 concurrent DELs leave
//! nothing; and `weir` killed with SIGKILL at random points of ADD (at least
//! 100 times) leaves nothing after a DEL and a GC.

use std::{
    collections::BTreeSet,
    thread,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use weir_conformance::{
    Rng,
    cni::{self, Invocation},
    node::{NodeOptions, TestNode},
};

#[test]
fn twenty_concurrent_adds_get_distinct_addresses_and_twenty_dels_leave_nothing() {
    const PODS: usize = 20;
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pods: Vec<_> = (0..PODS)
        .map(|i| node.pod_netns(&format!("c{i}")).expect("pod"))
        .collect();
    let invocations: Vec<Invocation> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let cid = node.container_id(&format!("c{i}"));
            let mut inv = Invocation::new(
                "ADD",
                &cid,
                &pod.path().to_string_lossy(),
                "eth0",
                node.config("1.0.0"),
            );
            inv.args = cni::kubernetes_args("default", &format!("pod-{i}"), &cid);
            inv
        })
        .collect();

    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = invocations
            .iter()
            .map(|inv| s.spawn(|| node.weir(inv)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    let mut addresses = BTreeSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let result = r
            .expect("run")
            .ok()
            .unwrap_or_else(|e| panic!("ADD {i}: {e:#}"))
            .expect("result");
        for ip in result["ips"].as_array().expect("ips") {
            let a = ip["address"].as_str().expect("address").to_owned();
            assert!(addresses.insert(a.clone()), "{a} handed out twice");
        }
        let links = pods[i].link_names().expect("links");
        assert_eq!(links, ["lo", "eth0"], "pod {i}");
    }
    assert_eq!(addresses.len(), PODS * 2, "one address per family per pod");
    assert_eq!(node.ipam().expect("ipam").list().expect("list").len(), PODS);

    let outcomes: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = invocations
            .iter()
            .map(|inv| {
                s.spawn(|| {
                    let mut del = inv.clone();
                    del.command = "DEL".into();
                    node.weir(&del)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect()
    });
    for (i, o) in outcomes.into_iter().enumerate() {
        let o = o.expect("run");
        assert!(o.success, "DEL {i}: {o:?}");
    }
    assert_eq!(node.leftovers().expect("leftovers"), Vec::<String>::new());
    for (i, pod) in pods.iter().enumerate() {
        assert_eq!(pod.link_names().expect("links"), ["lo"], "pod {i}");
    }
}

#[test]
fn sigkill_at_random_points_of_add_then_del_and_gc_leave_nothing() {
    const ROUNDS: usize = 100;
    // With this pause after each of ADD's steps, a random kill instant in
    // [0, ADD's duration) lands in every step.
    const STEP_DELAY_US: u64 = 1500;
    let node = TestNode::new(NodeOptions::default()).expect("node");
    let pod = node.pod_netns("k").expect("pod");
    let netns = pod.path().to_string_lossy().into_owned();
    let mut rng = Rng::from_entropy();
    let seed = rng.seed();
    eprintln!("seed {seed:#x}");

    // How long a delayed ADD takes here, to spread the kills over it.
    let probe = {
        let cid = node.container_id("probe");
        let mut inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.0.0"));
        inv.env
            .push(("WEIR_TEST_STEP_DELAY_US".into(), STEP_DELAY_US.to_string()));
        let t = Instant::now();
        node.weir(&inv).expect("run").ok().expect("probe ADD");
        let took = t.elapsed();
        let mut del = inv.clone();
        del.command = "DEL".into();
        assert!(node.weir(&del).expect("run").success);
        took
    };
    let window_us = probe.as_micros() as u64 + 2000;

    let mut completed = 0;
    for round in 0..ROUNDS {
        let cid = node.container_id(&format!("k{round}"));
        let mut inv = Invocation::new("ADD", &cid, &netns, "eth0", node.config("1.0.0"));
        inv.args = cni::kubernetes_args("default", "victim", &cid);
        inv.env
            .push(("WEIR_TEST_STEP_DELAY_US".into(), STEP_DELAY_US.to_string()));
        let kill_after = Duration::from_micros(rng.range(0, window_us));
        let mut child = cni::spawn(&node.bin, &inv, Some(&node.netns)).expect("spawn");
        thread::sleep(kill_after);
        let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().expect("wait");
        if status.success() {
            completed += 1;
        }

        // The runtime's answer to a failed ADD: DEL, and later a GC.
        let mut del = inv.clone();
        del.command = "DEL".into();
        del.env.clear();
        let out = node.weir(&del).expect("run");
        assert!(
            out.success,
            "round {round} (kill after {kill_after:?}): DEL {out:?}"
        );
        let out = node.gc(&[]).expect("run");
        assert!(out.success, "round {round}: GC {out:?}");
        let left = node.leftovers().expect("leftovers");
        assert!(
            left.is_empty(),
            "round {round} (kill after {kill_after:?}, seed {seed:#x}): {left:?}"
        );
        assert_eq!(pod.link_names().expect("links"), ["lo"], "round {round}");
    }
    eprintln!("{completed} of {ROUNDS} ADDs finished before their kill");
    assert!(completed < ROUNDS, "no kill landed inside ADD");
}
