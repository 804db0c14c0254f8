//! What the CNI binary records about each pod it wired, for weir-node's
//! metrics labels, inspection and hygiene: one JSON file per pod interface,
//! named after its host-side veth, under the endpoints directory (default
//! `/run/weir/endpoints`). Written atomically on ADD, removed on DEL and GC.

use std::{
    fs,
    io::{self, Write},
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Default directory of the endpoint records.
pub const DEFAULT_DIR: &str = "/run/weir/endpoints";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInfo {
    pub container_id: String,
    /// The interface name inside the pod (CNI_IFNAME).
    pub ifname: String,
    /// The host-side veth (`wr...`).
    pub host_ifname: String,
    /// ifindex of the host-side veth: the key of the endpoint's counters.
    pub host_ifindex: u32,
    /// CNI_NETNS as the runtime passed it.
    pub netns: String,
    /// The pod's addresses (keys of its `ENDPOINTS` entries).
    pub ips: Vec<IpAddr>,
    /// The pod interface's MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointInfoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid endpoint record: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EndpointInfoError + '_ {
    move |source| EndpointInfoError::Io {
        path: path.into(),
        source,
    }
}

/// The record file of a host-side interface.
pub fn path_of(dir: &Path, host_ifname: &str) -> PathBuf {
    dir.join(format!("{host_ifname}.json"))
}

impl EndpointInfo {
    /// Writes the record atomically (temp file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<(), EndpointInfoError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = path_of(dir, &self.host_ifname);
        let tmp = dir.join(format!(".{}.json.tmp", self.host_ifname));
        let body = serde_json::to_vec_pretty(self).map_err(|e| EndpointInfoError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(())
    }

    /// Reads the record of `host_ifname`; `None` when there is none.
    pub fn read(dir: &Path, host_ifname: &str) -> Result<Option<EndpointInfo>, EndpointInfoError> {
        let path = path_of(dir, host_ifname);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| EndpointInfoError::Parse { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Removes the record of `host_ifname`; succeeds when there is none.
    pub fn remove(dir: &Path, host_ifname: &str) -> Result<(), EndpointInfoError> {
        let path = path_of(dir, host_ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every readable record in `dir`, sorted by host interface. Unreadable
    /// ones are returned as errors beside them, so one bad file does not hide
    /// the rest.
    pub fn list(dir: &Path) -> (Vec<EndpointInfo>, Vec<EndpointInfoError>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return (ok, bad),
            Err(e) => return (ok, vec![io_err(dir)(e)]),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(host_ifname) = name.strip_suffix(".json") else {
                continue;
            };
            if host_ifname.starts_with('.') {
                continue;
            }
            match EndpointInfo::read(dir, host_ifname) {
                Ok(Some(info)) => ok.push(info),
                Ok(None) => {}
                Err(e) => bad.push(e),
            }
        }
        ok.sort_by(|a, b| a.host_ifname.cmp(&b.host_ifname));
        (ok, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(host: &str) -> EndpointInfo {
        EndpointInfo {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            host_ifname: host.into(),
            host_ifindex: 7,
            netns: "/run/netns/x".into(),
            ips: vec!["10.244.0.5".parse().unwrap()],
            mac: "02:00:00:00:00:01".into(),
            pod_namespace: Some("default".into()),
            pod_name: Some("web-0".into()),
        }
    }

    #[test]
    fn write_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        sample("wr2").write(dir.path()).unwrap();
        sample("wr1").write(dir.path()).unwrap();
        fs::write(dir.path().join("wr3.json"), b"garbage").unwrap();
        assert_eq!(
            EndpointInfo::read(dir.path(), "wr1").unwrap(),
            Some(sample("wr1"))
        );
        let (ok, bad) = EndpointInfo::list(dir.path());
        assert_eq!(ok, vec![sample("wr1"), sample("wr2")]);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("wr3.json"));
        EndpointInfo::remove(dir.path(), "wr1").unwrap();
        EndpointInfo::remove(dir.path(), "wr1").unwrap();
        assert_eq!(EndpointInfo::read(dir.path(), "wr1").unwrap(), None);
    }
}
