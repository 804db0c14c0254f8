//! The shape of an ADD result, per spec version (SPEC §5 "Result types"):
//! hand-written structural checks rather than a JSON schema.
//!
//! - 0.3.x and 0.4.0: `ips[].version` ("4" or "6", matching the address) is
//!   required; 1.0.0 removed it, so it must be absent from then on.
//! - 1.1.0 adds `interfaces[].mtu`, `socketPath`, `pciID` and the route
//!   attributes `mtu`, `advmss`, `priority`, `table`, `scope`.
//! - `ips[].interface` indexes `interfaces`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::runtime::version_lt;

/// Every way `result` departs from the result type of `version`; empty
/// means it conforms.
pub fn check_result(result: &Value, version: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let Some(obj) = result.as_object() else {
        return vec![format!("the result is not a JSON object: {result}")];
    };
    match obj.get("cniVersion").and_then(Value::as_str) {
        Some(v) if v == version => {}
        Some(v) => errs.push(format!(
            "cniVersion is {v}, the config's is {version} (they must match)"
        )),
        None => errs.push("cniVersion is missing".into()),
    }
    let v11 = !version_lt(version, "1.1.0");

    let mut n_ifaces = 0;
    match obj.get("interfaces") {
        None => {}
        Some(Value::Array(ifs)) => {
            n_ifaces = ifs.len();
            for (i, iface) in ifs.iter().enumerate() {
                check_interface(iface, i, v11, &mut errs);
            }
        }
        Some(other) => errs.push(format!("interfaces is not a list: {other}")),
    }

    match obj.get("ips") {
        None => {}
        Some(Value::Array(ips)) => {
            for (i, ip) in ips.iter().enumerate() {
                check_ip(ip, i, version, n_ifaces, &mut errs);
            }
        }
        Some(other) => errs.push(format!("ips is not a list: {other}")),
    }

    match obj.get("routes") {
        None => {}
        Some(Value::Array(routes)) => {
            for (i, r) in routes.iter().enumerate() {
                check_route(r, i, v11, &mut errs);
            }
        }
        Some(other) => errs.push(format!("routes is not a list: {other}")),
    }

    if let Some(dns) = obj.get("dns") {
        check_dns(dns, &mut errs);
    }
    errs
}

fn check_interface(iface: &Value, i: usize, v11: bool, errs: &mut Vec<String>) {
    let Some(o) = iface.as_object() else {
        errs.push(format!("interfaces[{i}] is not an object"));
        return;
    };
    match o.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => {}
        _ => errs.push(format!("interfaces[{i}].name is missing or not a string")),
    }
    if let Some(mac) = o.get("mac") {
        match mac.as_str() {
            Some(m) if is_mac(m) => {}
            _ => errs.push(format!("interfaces[{i}].mac is not a MAC address: {mac}")),
        }
    }
    if let Some(sb) = o.get("sandbox")
        && !sb.is_string()
    {
        errs.push(format!("interfaces[{i}].sandbox is not a string: {sb}"));
    }
    if v11 {
        if let Some(mtu) = o.get("mtu")
            && mtu.as_u64().is_none_or(|m| m == 0)
        {
            errs.push(format!(
                "interfaces[{i}].mtu is not a positive integer: {mtu}"
            ));
        }
        for k in ["socketPath", "pciID"] {
            if let Some(x) = o.get(k)
                && !x.is_string()
            {
                errs.push(format!("interfaces[{i}].{k} is not a string: {x}"));
            }
        }
    }
}

fn check_ip(ip: &Value, i: usize, version: &str, n_ifaces: usize, errs: &mut Vec<String>) {
    let Some(o) = ip.as_object() else {
        errs.push(format!("ips[{i}] is not an object"));
        return;
    };
    let addr: Option<IpNetwork> = match o.get("address").and_then(Value::as_str) {
        Some(a) if a.contains('/') => match a.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                errs.push(format!("ips[{i}].address is not a CIDR: {a}"));
                None
            }
        },
        Some(a) => {
            errs.push(format!("ips[{i}].address has no prefix length: {a}"));
            None
        }
        None => {
            errs.push(format!("ips[{i}].address is missing"));
            None
        }
    };
    if let Some(gw) = o.get("gateway") {
        match gw.as_str().map(str::parse::<IpAddr>) {
            Some(Ok(g)) => {
                if let Some(a) = addr
                    && a.is_ipv4() != g.is_ipv4()
                {
                    errs.push(format!(
                        "ips[{i}].gateway {g} is not of the address's family"
                    ));
                }
            }
            _ => errs.push(format!("ips[{i}].gateway is not an IP address: {gw}")),
        }
    }
    if let Some(idx) = o.get("interface") {
        match idx.as_u64() {
            Some(n) if (n as usize) < n_ifaces => {}
            Some(n) => errs.push(format!(
                "ips[{i}].interface {n} is out of range ({n_ifaces} interfaces)"
            )),
            None => errs.push(format!("ips[{i}].interface is not an index: {idx}")),
        }
    }
    let old = version_lt(version, "1.0.0");
    match (old, o.get("version")) {
        (true, None) => errs.push(format!("ips[{i}].version is required in {version}")),
        (true, Some(v)) => {
            let want = addr.map(|a| if a.is_ipv4() { "4" } else { "6" });
            match (v.as_str(), want) {
                (Some(s), Some(w)) if s == w => {}
                (Some("4" | "6"), None) => {}
                _ => errs.push(format!(
                    "ips[{i}].version {v} does not match the address family"
                )),
            }
        }
        (false, Some(v)) => errs.push(format!(
            "ips[{i}].version ({v}) was removed in 1.0.0 and must be absent in {version}"
        )),
        (false, None) => {}
    }
}

fn check_route(r: &Value, i: usize, v11: bool, errs: &mut Vec<String>) {
    let Some(o) = r.as_object() else {
        errs.push(format!("routes[{i}] is not an object"));
        return;
    };
    let dst = match o.get("dst").and_then(Value::as_str) {
        Some(d) => match d.parse::<IpNetwork>() {
            Ok(n) if d.contains('/') => Some(n),
            _ => {
                errs.push(format!("routes[{i}].dst is not a CIDR: {d}"));
                None
            }
        },
        None => {
            errs.push(format!("routes[{i}].dst is missing"));
            None
        }
    };
    if let Some(gw) = o.get("gw") {
        match gw.as_str().map(str::parse::<IpAddr>) {
            Some(Ok(g)) => {
                if let Some(d) = dst
                    && d.is_ipv4() != g.is_ipv4()
                {
                    errs.push(format!("routes[{i}].gw {g} is not of dst's family"));
                }
            }
            _ => errs.push(format!("routes[{i}].gw is not an IP address: {gw}")),
        }
    }
    if v11 {
        for k in ["mtu", "advmss", "priority", "table", "scope"] {
            if let Some(x) = o.get(k)
                && !x.is_u64()
            {
                errs.push(format!(
                    "routes[{i}].{k} is not a non-negative integer: {x}"
                ));
            }
        }
    }
}

fn check_dns(dns: &Value, errs: &mut Vec<String>) {
    let Some(o) = dns.as_object() else {
        errs.push(format!("dns is not an object: {dns}"));
        return;
    };
    if let Some(ns) = o.get("nameservers") {
        match ns.as_array() {
            Some(list) => {
                for n in list {
                    if n.as_str().is_none_or(|s| s.parse::<IpAddr>().is_err()) {
                        errs.push(format!("dns.nameservers has a non-address: {n}"));
                    }
                }
            }
            None => errs.push(format!("dns.nameservers is not a list: {ns}")),
        }
    }
    if let Some(d) = o.get("domain")
        && !d.is_string()
    {
        errs.push(format!("dns.domain is not a string: {d}"));
    }
    for k in ["search", "options"] {
        if let Some(x) = o.get(k)
            && !x.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            errs.push(format!("dns.{k} is not a list of strings: {x}"));
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn good(version: &str) -> Value {
        let mut ip = json!({"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1});
        if version_lt(version, "1.0.0") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "AA:BB:CC:DD:EE:00", "sandbox": "/run/netns/x"}
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.1"], "search": ["a"]}
        })
    }

    #[test]
    fn well_formed_results_pass_for_every_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert_eq!(check_result(&good(v), v), Vec::<String>::new(), "{v}");
        }
    }

    #[test]
    fn ip_version_is_required_before_1_0_and_gone_after() {
        let mut r = good("0.4.0");
        r["ips"][0].as_object_mut().unwrap().remove("version");
        assert!(check_result(&r, "0.4.0")[0].contains("required"));
        let mut r = good("1.0.0");
        r["ips"][0]["version"] = json!("4");
        assert!(check_result(&r, "1.0.0")[0].contains("removed"));
        let mut r = good("0.3.1");
        r["ips"][0]["version"] = json!("6");
        assert!(check_result(&r, "0.3.1")[0].contains("family"));
    }

    #[test]
    fn bad_shapes_are_named() {
        let mut r = good("1.0.0");
        r["cniVersion"] = json!("0.4.0");
        r["ips"][0]["interface"] = json!(2);
        r["ips"][0]["address"] = json!("10.1.0.5");
        r["interfaces"][0]["mac"] = json!("zz");
        r["routes"][0]["gw"] = json!("fe80::1");
        r["dns"]["nameservers"] = json!(["x"]);
        let errs = check_result(&r, "1.0.0");
        assert_eq!(errs.len(), 6, "{errs:#?}");
        assert!(check_result(&json!([]), "1.0.0")[0].contains("not a JSON object"));
    }

    #[test]
    fn v1_1_fields_are_typed() {
        let mut r = good("1.1.0");
        r["interfaces"][0]["mtu"] = json!("1500");
        r["routes"][0]["table"] = json!(-1);
        assert_eq!(check_result(&r, "1.1.0").len(), 2);
    }
}
