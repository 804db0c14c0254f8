//! Validated address pools: range sets of ranges, and the address arithmetic
//! the allocator walks with.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::IpNetwork;

use crate::config::RangeConfig;
use crate::{AllocatedIp, IpamError};

/// A validated range: every address in `[start, end]` except the gateway
/// may be handed out, and none of them is the network or IPv4 broadcast
/// address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    subnet: IpNetwork,
    gateway: Option<IpAddr>,
    lo: u128,
    hi: u128,
    /// The gateway, when it lies in `[lo, hi]` and must be skipped.
    skip: Option<u128>,
}

impl Range {
    pub fn subnet(&self) -> IpNetwork {
        self.subnet
    }

    pub fn start(&self) -> IpAddr {
        from_u128(self.lo, self.is_ipv4())
    }

    pub fn end(&self) -> IpAddr {
        from_u128(self.hi, self.is_ipv4())
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    pub fn is_ipv4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    /// How many addresses this range can hand out.
    pub fn capacity(&self) -> u128 {
        self.hi - self.lo + 1 - u128::from(self.skip.is_some())
    }

    /// Whether `ip` is one this range may hand out.
    pub fn can_hand_out(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4() && {
            let v = to_u128(ip);
            self.lo <= v && v <= self.hi && self.skip != Some(v)
        }
    }

    fn covers(&self, v: u128) -> bool {
        self.lo <= v && v <= self.hi
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}-{}]", self.subnet, self.start(), self.end())?;
        if let Some(gw) = self.gateway {
            write!(f, " gateway {gw}")?;
        }
        Ok(())
    }
}

/// Ranges of one family; an attachment gets one address from each set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn is_ipv4(&self) -> bool {
        self.ranges[0].is_ipv4()
    }

    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |sum, r| sum.saturating_add(r.capacity()))
    }

    /// Whether `ip` is one this set may hand out.
    pub fn can_hand_out(&self, ip: IpAddr) -> bool {
        self.range_of(ip).is_some()
    }

    /// The range that may hand out `ip`.
    pub fn range_of(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.can_hand_out(ip))
    }

    /// Every address this set may hand out, once each, in round-robin order
    /// starting right after `cursor` (or at the first address when the
    /// cursor is not inside any range of the set).
    pub fn candidates_after(&self, cursor: Option<IpAddr>) -> Candidates<'_> {
        let v4 = self.is_ipv4();
        let position = cursor
            .filter(|ip| ip.is_ipv4() == v4)
            .map(to_u128)
            .and_then(|v| {
                self.ranges
                    .iter()
                    .position(|r| r.covers(v))
                    .map(|i| self.step(i, v))
            });
        let (range, next) = position.unwrap_or((0, self.ranges[0].lo));
        Candidates {
            set: self,
            range,
            next,
            remaining: self.capacity(),
        }
    }

    /// The position after address `v` of range `i`, wrapping around.
    fn step(&self, i: usize, v: u128) -> (usize, u128) {
        if v == self.ranges[i].hi {
            let i = (i + 1) % self.ranges.len();
            (i, self.ranges[i].lo)
        } else {
            (i, v + 1)
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// See [`RangeSet::candidates_after`].
pub struct Candidates<'a> {
    set: &'a RangeSet,
    range: usize,
    next: u128,
    remaining: u128,
}

impl Iterator for Candidates<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        while self.remaining > 0 {
            let v = self.next;
            let range = &self.set.ranges[self.range];
            (self.range, self.next) = self.set.step(self.range, v);
            if range.skip != Some(v) {
                self.remaining -= 1;
                return Some(from_u128(v, range.is_ipv4()));
            }
        }
        None
    }
}

/// The validated pool: one or more range sets, no two ranges overlapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    sets: Vec<RangeSet>,
}

impl Pool {
    /// Validates the config's `ipam.ranges`. Every problem is an
    /// [`IpamError::InvalidRange`] naming its field, e.g.
    /// `ipam.ranges[0][1].rangeStart`.
    pub fn from_config(ranges: &[Vec<RangeConfig>]) -> Result<Pool, IpamError> {
        if ranges.is_empty() {
            return Err(IpamError::InvalidRange {
                field: "ipam.ranges".into(),
                reason: "no range set configured".into(),
            });
        }
        build(ranges, &|i, j, field| match (j, field) {
            (None, _) => format!("ipam.ranges[{i}]"),
            (Some(j), None) => format!("ipam.ranges[{i}][{j}]"),
            (Some(j), Some(field)) => format!("ipam.ranges[{i}][{j}].{field}"),
        })
    }

    /// One range set per CIDR (a node's pod CIDRs), the whole subnet less its
    /// network and broadcast addresses, and no gateway. Errors name
    /// `podCIDRs[i]`.
    pub fn from_cidrs(cidrs: &[IpNetwork]) -> Result<Pool, IpamError> {
        if cidrs.is_empty() {
            return Err(IpamError::InvalidRange {
                field: "podCIDRs".into(),
                reason: "no pod CIDR".into(),
            });
        }
        let ranges: Vec<Vec<RangeConfig>> = cidrs
            .iter()
            .map(|c| {
                vec![RangeConfig {
                    subnet: c.to_string(),
                    range_start: None,
                    range_end: None,
                    gateway: None,
                }]
            })
            .collect();
        build(&ranges, &|i, _, _| format!("podCIDRs[{i}]"))
    }

    pub fn sets(&self) -> &[RangeSet] {
        &self.sets
    }

    /// The set that may hand out `ip`.
    pub fn set_of(&self, ip: IpAddr) -> Option<usize> {
        self.sets.iter().position(|s| s.can_hand_out(ip))
    }

    /// `ip` with its subnet's prefix length and its range's gateway; a
    /// host-length prefix and no gateway when `ip` is outside the pool.
    pub fn describe(&self, ip: IpAddr) -> AllocatedIp {
        let range = self.sets.iter().find_map(|s| s.range_of(ip));
        let (prefix, gateway) = match range {
            Some(r) => (r.subnet.prefix(), r.gateway),
            None => (if ip.is_ipv4() { 32 } else { 128 }, None),
        };
        AllocatedIp {
            address: IpNetwork::new(ip, prefix).expect("prefix fits the family"),
            gateway,
        }
    }
}

/// Names the field at (set, range, field) in error messages.
type FieldNamer = dyn Fn(usize, Option<usize>, Option<&str>) -> String;

fn build(sets: &[Vec<RangeConfig>], name: &FieldNamer) -> Result<Pool, IpamError> {
    let invalid = |field: String, reason: String| IpamError::InvalidRange { field, reason };
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        if set.is_empty() {
            return Err(invalid(name(i, None, None), "empty range set".into()));
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(set.len());
        for (j, rc) in set.iter().enumerate() {
            let range = validate_range(rc, &|field| name(i, Some(j), field))?;
            if let Some(first) = ranges.first()
                && first.is_ipv4() != range.is_ipv4()
            {
                return Err(invalid(
                    name(i, Some(j), Some("subnet")),
                    format!(
                        "{} is {} but {} is {}; a range set holds one family",
                        range.subnet,
                        family(range.is_ipv4()),
                        name(i, Some(0), None),
                        family(first.is_ipv4()),
                    ),
                ));
            }
            ranges.push(range);
        }
        out.push(RangeSet { ranges });
    }

    // No address may be reachable from two ranges, and no range may hand
    // out another range's gateway.
    let all: Vec<(usize, usize, &Range)> = out
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.ranges.iter().enumerate().map(move |(j, r)| (i, j, r)))
        .collect();
    for (n, &(i, j, r)) in all.iter().enumerate() {
        for &(a, b, earlier) in &all[..n] {
            if earlier.is_ipv4() == r.is_ipv4() && earlier.lo <= r.hi && r.lo <= earlier.hi {
                return Err(invalid(
                    name(i, Some(j), None),
                    format!("{r} overlaps {} ({earlier})", name(a, Some(b), None)),
                ));
            }
        }
        for &(a, b, other) in &all {
            let Some(gw) = r.gateway.filter(|gw| gw.is_ipv4() == other.is_ipv4()) else {
                continue;
            };
            if (a, b) != (i, j) && other.can_hand_out(gw) {
                return Err(invalid(
                    name(i, Some(j), Some("gateway")),
                    format!(
                        "{gw} lies inside {} ({other}), which would hand it out",
                        name(a, Some(b), None)
                    ),
                ));
            }
        }
    }
    Ok(Pool { sets: out })
}

fn validate_range(
    rc: &RangeConfig,
    name: &dyn Fn(Option<&str>) -> String,
) -> Result<Range, IpamError> {
    let invalid = |field: Option<&str>, reason: String| IpamError::InvalidRange {
        field: name(field),
        reason,
    };
    let subnet = parse_subnet(&rc.subnet).map_err(|reason| invalid(Some("subnet"), reason))?;
    let v4 = subnet.is_ipv4();
    let net = to_u128(subnet.network());
    let last = net | host_mask(&subnet);
    // The addresses that may ever be handed out: not the network address,
    // not the IPv4 broadcast address.
    let usable_lo = net.checked_add(1).filter(|&v| v <= last);
    let usable_hi = if v4 {
        last.checked_sub(1).filter(|&v| v >= net)
    } else {
        Some(last)
    };

    let check_inside = |field: &str, ip: IpAddr| -> Result<u128, IpamError> {
        if ip.is_ipv4() != v4 {
            return Err(invalid(
                Some(field),
                format!(
                    "{ip} is {} but subnet {subnet} is {}",
                    family(!v4),
                    family(v4)
                ),
            ));
        }
        let v = to_u128(ip);
        if !subnet.contains(ip) {
            return Err(invalid(
                Some(field),
                format!("{ip} is outside subnet {subnet}"),
            ));
        }
        if v == net {
            return Err(invalid(
                Some(field),
                format!("{ip} is the network address of {subnet}"),
            ));
        }
        if v4 && v == last {
            return Err(invalid(
                Some(field),
                format!("{ip} is the broadcast address of {subnet}"),
            ));
        }
        Ok(v)
    };

    let start = rc
        .range_start
        .map(|ip| check_inside("rangeStart", ip))
        .transpose()?;
    let end = rc
        .range_end
        .map(|ip| check_inside("rangeEnd", ip))
        .transpose()?;
    let gateway = rc
        .gateway
        .map(|ip| check_inside("gateway", ip))
        .transpose()?;

    let too_small = || {
        let field = match (rc.range_start, rc.range_end) {
            (None, None) => Some("subnet"),
            _ => None,
        };
        invalid(
            field,
            format!(
                "range too small: {} leaves no address to hand out",
                describe_config(rc)
            ),
        )
    };
    let (Some(lo), Some(hi)) = (start.or(usable_lo), end.or(usable_hi)) else {
        return Err(too_small());
    };
    if lo > hi {
        return Err(match (start, end) {
            (Some(_), Some(_)) | (Some(_), None) => invalid(
                Some("rangeStart"),
                format!(
                    "{} is after rangeEnd {}",
                    from_u128(lo, v4),
                    from_u128(hi, v4)
                ),
            ),
            (None, Some(_)) => invalid(
                Some("rangeEnd"),
                format!(
                    "{} is before rangeStart {}",
                    from_u128(hi, v4),
                    from_u128(lo, v4)
                ),
            ),
            (None, None) => too_small(),
        });
    }
    let range = Range {
        subnet,
        gateway: rc.gateway,
        lo,
        hi,
        skip: gateway.filter(|&g| lo <= g && g <= hi),
    };
    if range.capacity() == 0 {
        return Err(too_small());
    }
    Ok(range)
}

fn parse_subnet(s: &str) -> Result<IpNetwork, String> {
    if !s.contains('/') {
        return Err(format!("{s:?} is not a CIDR (address/prefix length)"));
    }
    let net = IpNetwork::from_str(s).map_err(|e| format!("{s:?} is not a CIDR: {e}"))?;
    if net.ip() != net.network() {
        return Err(format!(
            "{s} has host bits set; did you mean {}/{}?",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

fn describe_config(rc: &RangeConfig) -> String {
    let mut s = rc.subnet.clone();
    if rc.range_start.is_some() || rc.range_end.is_some() {
        let show = |ip: Option<IpAddr>| ip.map_or("*".to_string(), |ip| ip.to_string());
        s += &format!(" [{}-{}]", show(rc.range_start), show(rc.range_end));
    }
    if let Some(gw) = rc.gateway {
        s += &format!(" gateway {gw}");
    }
    s
}

fn host_mask(net: &IpNetwork) -> u128 {
    let bits: u32 = if net.is_ipv4() { 32 } else { 128 };
    let host = bits - u32::from(net.prefix());
    if host == 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

fn family(v4: bool) -> &'static str {
    if v4 { "IPv4" } else { "IPv6" }
}

pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str) -> RangeConfig {
        RangeConfig {
            subnet: subnet.into(),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    #[test]
    fn defaults_skip_network_and_broadcast() {
        let pool =
            Pool::from_config(&[vec![range("10.0.0.0/30")], vec![range("fd00::/126")]]).unwrap();
        let v4: Vec<IpAddr> = pool.sets()[0].candidates_after(None).collect();
        assert_eq!(
            v4,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        let v6: Vec<IpAddr> = pool.sets()[1].candidates_after(None).collect();
        assert_eq!(v6.len(), 3, "{v6:?}");
        assert_eq!(v6[2], "fd00::3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn candidates_wrap_across_ranges_and_skip_gateway() {
        let set = vec![
            RangeConfig {
                range_start: Some("10.0.0.1".parse().unwrap()),
                range_end: Some("10.0.0.3".parse().unwrap()),
                gateway: Some("10.0.0.2".parse().unwrap()),
                ..range("10.0.0.0/24")
            },
            RangeConfig {
                range_start: Some("10.0.1.7".parse().unwrap()),
                range_end: Some("10.0.1.8".parse().unwrap()),
                ..range("10.0.1.0/24")
            },
        ];
        let pool = Pool::from_config(&[set]).unwrap();
        let s = &pool.sets()[0];
        assert_eq!(s.capacity(), 4);
        let after = |c: &str| -> Vec<String> {
            s.candidates_after(Some(c.parse().unwrap()))
                .map(|ip| ip.to_string())
                .collect()
        };
        assert_eq!(
            after("10.0.0.3"),
            ["10.0.1.7", "10.0.1.8", "10.0.0.1", "10.0.0.3"]
        );
        assert_eq!(
            after("10.0.1.8"),
            ["10.0.0.1", "10.0.0.3", "10.0.1.7", "10.0.1.8"]
        );
        // The gateway as a cursor still positions the walk.
        assert_eq!(
            after("10.0.0.2"),
            ["10.0.0.3", "10.0.1.7", "10.0.1.8", "10.0.0.1"]
        );
        // A cursor outside the set starts at the beginning.
        assert_eq!(
            after("192.168.0.1"),
            ["10.0.0.1", "10.0.0.3", "10.0.1.7", "10.0.1.8"]
        );
    }

    #[test]
    fn huge_ipv6_subnets_have_exact_capacity() {
        let pool = Pool::from_config(&[vec![range("::/0")]]).unwrap();
        assert_eq!(pool.sets()[0].capacity(), u128::MAX);
        let first: Vec<IpAddr> = pool.sets()[0].candidates_after(None).take(2).collect();
        assert_eq!(
            first,
            ["::1".parse::<IpAddr>().unwrap(), "::2".parse().unwrap()]
        );
    }

    #[test]
    fn describe_uses_the_subnet_prefix_and_gateway() {
        let pool = Pool::from_config(&[vec![RangeConfig {
            gateway: Some("10.0.0.1".parse().unwrap()),
            ..range("10.0.0.0/24")
        }]])
        .unwrap();
        let a = pool.describe("10.0.0.9".parse().unwrap());
        assert_eq!(a.address.to_string(), "10.0.0.9/24");
        assert_eq!(a.gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            pool.describe("10.9.0.9".parse().unwrap())
                .address
                .to_string(),
            "10.9.0.9/32"
        );
    }
}
