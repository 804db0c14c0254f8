//! The pin layout under the bpffs root (default `/sys/fs/bpf/weir`):
//!
//! ```text
//! <root>/maps/<MAP>               every map of the object
//! <root>/progs/<program>          the loaded programs (from_pod, to_pod)
//! <root>/links/<ifname>/<program> the TCX link of a program on a pod's host veth
//! ```
//!
//! All pin paths are formatted here and nowhere else.

use std::path::{Path, PathBuf};

/// The default bpffs directory that weir owns.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/weir";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl Default for PinLayout {
    fn default() -> Self {
        Self::new(DEFAULT_PIN_ROOT)
    }
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn program(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    /// Where a freshly loaded program is pinned before it is renamed over
    /// [`PinLayout::program`] (bpffs supports rename, so the swap is atomic).
    pub fn program_staging(&self, name: &str) -> PathBuf {
        // bpffs refuses names with a dot in them.
        self.progs_dir().join(format!("{name}_staging"))
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The directory holding the links of one interface.
    pub fn interface_links(&self, ifname: &str) -> PathBuf {
        self.links_dir().join(ifname)
    }

    pub fn link(&self, ifname: &str, program: &str) -> PathBuf {
        self.interface_links(ifname).join(program)
    }

    /// True when the datapath has been loaded here: every map and program pin
    /// exists.
    pub fn is_loaded(&self) -> bool {
        weir_common::map_names::ALL
            .iter()
            .all(|m| self.map(m).exists())
            && weir_common::program_names::ALL
                .iter()
                .all(|p| self.program(p).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_rooted_and_stable() {
        let l = PinLayout::new("/sys/fs/bpf/x");
        assert_eq!(
            l.map("ENDPOINTS"),
            Path::new("/sys/fs/bpf/x/maps/ENDPOINTS")
        );
        assert_eq!(
            l.program("from_pod"),
            Path::new("/sys/fs/bpf/x/progs/from_pod")
        );
        assert_eq!(
            l.link("wr0123456789abc", "to_pod"),
            Path::new("/sys/fs/bpf/x/links/wr0123456789abc/to_pod")
        );
        assert_eq!(PinLayout::default().root(), Path::new(DEFAULT_PIN_ROOT));
    }
}
