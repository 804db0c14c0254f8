//! The host-side interface name of an attachment: `wr` and 13 hex digits of
//! a SHA-256 of (container id, ifname). DEL and GC derive it again without
//! any state.

use sha2::{Digest, Sha256};

pub const HOST_PREFIX: &str = "wr";

pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    let digest = h.finalize();
    let mut out = String::with_capacity(15);
    out.push_str(HOST_PREFIX);
    for b in digest.iter().take(7) {
        out.push_str(&format!("{b:02x}"));
    }
    out.truncate(15);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_short_and_distinct() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("wr"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(host_ifname("ab", "ceth0"), host_ifname("abc", "eth0"));
    }
}
