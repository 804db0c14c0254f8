//! Every way a range can be wrong gives `InvalidRange` naming its field.

mod common;

use common::{ip, range};
use ipnetwork::IpNetwork;
use weir_ipam::{IpamConfig, IpamError, Pool, RangeConfig};

#[track_caller]
fn invalid(sets: &[Vec<RangeConfig>], field: &str, reason_has: &str) {
    match Pool::from_config(sets) {
        Err(e @ IpamError::InvalidRange { .. }) => {
            assert!(e.is_invalid_config());
            assert!(!e.is_exhausted());
            let IpamError::InvalidRange { field: f, reason } = &e else {
                unreachable!()
            };
            assert_eq!(f, field, "{e}");
            assert!(
                reason.contains(reason_has),
                "{reason:?} lacks {reason_has:?}"
            );
            assert!(e.to_string().contains(field), "{e}");
        }
        other => panic!("{sets:?}: expected InvalidRange on {field}, got {other:?}"),
    }
}

fn with(subnet: &str, f: impl FnOnce(&mut RangeConfig)) -> RangeConfig {
    let mut r = range(subnet);
    f(&mut r);
    r
}

#[test]
fn invalid_cidrs() {
    for bad in [
        "",
        "10.0.0.0",
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0/24",
        "banana/8",
        "10.0.0.0/-1",
    ] {
        invalid(
            &[vec![range(bad)]],
            "ipam.ranges[0][0].subnet",
            "not a CIDR",
        );
    }
    invalid(
        &[vec![range("10.0.0.0/24")], vec![range("fd00::1/64")]],
        "ipam.ranges[1][0].subnet",
        "host bits set; did you mean fd00::/64",
    );
}

#[test]
fn ranges_too_small() {
    for tiny in ["10.0.0.0/32", "10.0.0.0/31", "fd00::/128"] {
        invalid(
            &[vec![range(tiny)]],
            "ipam.ranges[0][0].subnet",
            "range too small",
        );
    }
    // A /30 has two usable addresses; a gateway and a bound take them away.
    invalid(
        &[vec![with("10.0.0.0/30", |r| {
            r.range_start = Some(ip("10.0.0.2"));
            r.gateway = Some(ip("10.0.0.2"));
        })]],
        "ipam.ranges[0][0]",
        "range too small",
    );
    invalid(
        &[vec![with("10.0.0.0/24", |r| {
            r.range_start = Some(ip("10.0.0.9"));
            r.range_end = Some(ip("10.0.0.9"));
            r.gateway = Some(ip("10.0.0.9"));
        })]],
        "ipam.ranges[0][0]",
        "range too small",
    );
    // The smallest useful ones are fine.
    let pool = Pool::from_config(&[vec![range("10.0.0.0/30")], vec![range("fd00::/127")]]).unwrap();
    assert_eq!(pool.sets()[0].capacity(), 2);
    assert_eq!(pool.sets()[1].capacity(), 1);
}

#[test]
fn start_after_end() {
    invalid(
        &[vec![with("10.0.0.0/24", |r| {
            r.range_start = Some(ip("10.0.0.9"));
            r.range_end = Some(ip("10.0.0.5"));
        })]],
        "ipam.ranges[0][0].rangeStart",
        "10.0.0.9 is after rangeEnd 10.0.0.5",
    );
    invalid(
        &[vec![with("fd00::/64", |r| {
            r.range_end = Some(ip("fd00::1"));
            r.range_start = Some(ip("fd00::2"));
        })]],
        "ipam.ranges[0][0].rangeStart",
        "is after rangeEnd",
    );
}

#[test]
fn bounds_and_gateway_outside_their_subnet() {
    for field in ["rangeStart", "rangeEnd", "gateway"] {
        let set = |r: &mut RangeConfig, v: std::net::IpAddr| match field {
            "rangeStart" => r.range_start = Some(v),
            "rangeEnd" => r.range_end = Some(v),
            _ => r.gateway = Some(v),
        };
        let path = format!("ipam.ranges[0][0].{field}");
        invalid(
            &[vec![with("10.0.0.0/24", |r| set(r, ip("10.0.1.5")))]],
            &path,
            "outside subnet 10.0.0.0/24",
        );
        invalid(
            &[vec![with("10.0.0.0/24", |r| set(r, ip("10.0.0.0")))]],
            &path,
            "network address",
        );
        invalid(
            &[vec![with("10.0.0.0/24", |r| set(r, ip("10.0.0.255")))]],
            &path,
            "broadcast address",
        );
        invalid(
            &[vec![with("10.0.0.0/24", |r| set(r, ip("fd00::5")))]],
            &path,
            "is IPv6 but subnet",
        );
        invalid(
            &[vec![with("fd00::/64", |r| set(r, ip("fd01::5")))]],
            &path,
            "outside subnet fd00::/64",
        );
        invalid(
            &[vec![with("fd00::/64", |r| set(r, ip("fd00::")))]],
            &path,
            "network address",
        );
    }
    // The last address of an IPv6 subnet is fine.
    Pool::from_config(&[vec![with("fd00::/120", |r| {
        r.range_end = Some(ip("fd00::ff"))
    })]])
    .unwrap();
}

#[test]
fn overlapping_ranges() {
    // Across sets.
    invalid(
        &[vec![range("10.0.0.0/24")], vec![range("10.0.0.128/25")]],
        "ipam.ranges[1][0]",
        "overlaps ipam.ranges[0][0]",
    );
    // Within a set.
    invalid(
        &[vec![
            with("10.0.0.0/24", |r| r.range_end = Some(ip("10.0.0.100"))),
            with("10.0.0.0/24", |r| r.range_start = Some(ip("10.0.0.100"))),
        ]],
        "ipam.ranges[0][1]",
        "overlaps ipam.ranges[0][0]",
    );
    invalid(
        &[vec![range("fd00::/64")], vec![range("fd00::/48")]],
        "ipam.ranges[1][0]",
        "overlaps",
    );
    // One range handing out another's gateway.
    invalid(
        &[vec![
            with("10.0.0.0/24", |r| {
                r.range_end = Some(ip("10.0.0.100"));
            }),
            with("10.0.0.0/24", |r| {
                r.range_start = Some(ip("10.0.0.101"));
                r.gateway = Some(ip("10.0.0.50"));
            }),
        ]],
        "ipam.ranges[0][1].gateway",
        "would hand it out",
    );
    // Disjoint parts of one subnet are fine, and so is a shared gateway
    // outside both.
    Pool::from_config(&[
        vec![with("10.0.0.0/24", |r| {
            r.range_start = Some(ip("10.0.0.10"));
            r.range_end = Some(ip("10.0.0.100"));
            r.gateway = Some(ip("10.0.0.1"));
        })],
        vec![with("10.0.0.0/24", |r| {
            r.range_start = Some(ip("10.0.0.101"));
            r.gateway = Some(ip("10.0.0.1"));
        })],
    ])
    .unwrap();
}

#[test]
fn range_sets_hold_one_family_and_are_not_empty() {
    invalid(
        &[vec![range("10.0.0.0/24"), range("fd00::/64")]],
        "ipam.ranges[0][1].subnet",
        "one family",
    );
    invalid(
        &[vec![range("10.0.0.0/24")], vec![]],
        "ipam.ranges[1]",
        "empty range set",
    );
    invalid(&[], "ipam.ranges", "no range set");
}

#[test]
fn pod_cidrs_name_their_index() {
    let ok = |s: &str| s.parse::<IpNetwork>().unwrap();
    let pool = Pool::from_cidrs(&[ok("10.244.1.0/24"), ok("fd00:10:244:1::/64")]).unwrap();
    assert_eq!(pool.sets().len(), 2);
    assert_eq!(pool.sets()[0].capacity(), 254);
    assert_eq!(pool.sets()[0].ranges()[0].gateway(), None);
    let e = Pool::from_cidrs(&[ok("10.244.1.0/24"), ok("10.244.1.0/25")]).unwrap_err();
    assert!(
        matches!(&e, IpamError::InvalidRange { field, .. } if field == "podCIDRs[1]"),
        "{e}"
    );
    let e = Pool::from_cidrs(&[ok("10.244.1.7/24")]).unwrap_err();
    assert!(
        matches!(&e, IpamError::InvalidRange { field, reason } if field == "podCIDRs[0]" && reason.contains("host bits")),
        "{e}"
    );
    let e = Pool::from_cidrs(&[ok("10.244.1.0/32")]).unwrap_err();
    assert!(
        matches!(&e, IpamError::InvalidRange { field, reason } if field == "podCIDRs[0]" && reason.contains("too small")),
        "{e}"
    );
    assert!(Pool::from_cidrs(&[]).unwrap_err().is_invalid_config());
}

#[test]
fn config_json_has_host_locals_shape() {
    let cfg: IpamConfig = serde_json::from_str(
        r#"{"type": "weir", "ranges": [
            [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.20", "gateway": "10.0.0.1"}],
            [{"subnet": "fd00::/64"}]
        ]}"#,
    )
    .unwrap();
    assert_eq!(cfg.ranges[0][0].range_start, Some(ip("10.0.0.10")));
    assert_eq!(cfg.ranges[1][0], range("fd00::/64"));
    let pool = Pool::from_config(&cfg.ranges).unwrap();
    assert_eq!(pool.sets()[0].capacity(), 11);
    let none: IpamConfig = serde_json::from_str("{}").unwrap();
    assert!(none.ranges.is_empty());
    let back = serde_json::to_value(&cfg).unwrap();
    assert_eq!(back["ranges"][0][0]["rangeStart"], "10.0.0.10");
}
