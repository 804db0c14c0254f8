//! The one masquerade rule: `from_pod` marks traffic that leaves the cluster
//! with [`weir_common::MARK_MASQUERADE`] (within [`weir_common::MARK_MASK`]),
//! and a single nftables rule in weir's own table rewrites its source to the
//! node's address. The rule count never grows with pods, nodes or services.
//! Installed with `nft -f -` as one transaction (create, flush, fill), so it
//! is idempotent and never half there.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use weir_common::{MARK_MASK, MARK_MASQUERADE};

/// weir's nftables table (family `inet`).
pub const TABLE: &str = "weir";

#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("running nft: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the masquerade table: {stderr}")]
    Nft { stderr: String },
}

/// The nft script that (re)creates weir's table with its single rule.
pub fn script() -> String {
    format!(
        "table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MARK_MASK:#010x} == {MARK_MASQUERADE:#010x} counter masquerade comment \"weir: pod traffic leaving the cluster\"\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(bool, String), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqueradeError::Spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(MasqueradeError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(MasqueradeError::Spawn)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// Creates (or recreates) weir's table with the masquerade rule.
pub fn install() -> Result<(), MasqueradeError> {
    match nft(&["-f", "-"], Some(&script()))? {
        (true, _) => Ok(()),
        (false, stderr) => Err(MasqueradeError::Nft { stderr }),
    }
}

/// True when weir's table exists.
pub fn present() -> Result<bool, MasqueradeError> {
    Ok(nft(&["list", "table", "inet", TABLE], None)?.0)
}

/// Removes weir's table; returns whether it was there.
pub fn remove() -> Result<bool, MasqueradeError> {
    if !present()? {
        return Ok(false);
    }
    match nft(&["delete", "table", "inet", TABLE], None)? {
        (true, _) => Ok(true),
        (false, stderr) => Err(MasqueradeError::Nft { stderr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_replaces_the_table_and_matches_the_datapath_mark() {
        let s = script();
        let create = s.find("table inet weir {}").unwrap();
        let delete = s.find("delete table inet weir").unwrap();
        let fill = s.find("chain postrouting").unwrap();
        assert!(create < delete && delete < fill, "{s}");
        assert!(
            s.contains("meta mark & 0x00ff0000 == 0x00570000 counter masquerade"),
            "{s}"
        );
        assert_eq!(s.matches("masquerade comment").count(), 1, "one rule");
    }
}
