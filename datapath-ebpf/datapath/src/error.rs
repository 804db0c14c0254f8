use std::{io, path::PathBuf};

/// Everything that can go wrong in weir's datapath user space. Each variant
/// names the map, program, pin or interface involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs is not mounted at {path} (mount it with `mount -t bpf bpf {path}`)")]
    BpffsMissing { path: PathBuf },

    #[error("mounting bpffs at {path}: {source}")]
    BpffsMount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("datapath pins are missing under {root}: is weir-node running?")]
    NotLoaded { root: PathBuf },

    #[error(
        "pinned datapath under {root} has ABI version {found}, this build speaks {expected}: \
         run `weir-node uninstall` (pods lose connectivity until re-added) or run the matching weir-node"
    )]
    AbiMismatch {
        root: PathBuf,
        found: u32,
        expected: u32,
    },

    #[error("loading the eBPF object: {source}")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },

    #[error("the eBPF object has no program {name}")]
    MissingProgram { name: String },

    #[error("the eBPF object has no map {name}")]
    MissingMap { name: String },

    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("map {name} at {path}: {source}")]
    OpenMap {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error(
        "map {name} has key size {key_size} and value size {value_size}, expected {expected_key} and {expected_value}"
    )]
    MapLayout {
        name: &'static str,
        key_size: u32,
        value_size: u32,
        expected_key: u32,
        expected_value: u32,
    },

    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },

    #[error("link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },

    #[error("interface {ifname}: {source}")]
    Attach {
        ifname: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// True when the error means "the datapath is not there (yet)", as opposed
    /// to a broken one: the CNI maps this to "try again later".
    pub fn is_not_loaded(&self) -> bool {
        matches!(self, Error::NotLoaded { .. } | Error::BpffsMissing { .. })
    }
}
