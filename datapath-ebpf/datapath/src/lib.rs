//! User space of weir's eBPF datapath.
//!
//! - [`object`]: the compiled eBPF object, embedded at build time.
//! - [`paths`]: where everything is pinned; nobody else formats a pin path.
//! - [`loader`]: load the object and pin its maps and programs, reusing pins
//!   that are already there (weir-node).
//! - [`maps`]: one typed wrapper per map, opened from its pin.
//! - [`endpoint_info`]: the CNI's record of each pod interface.
//! - [`node_info`]: `/run/weir/node.json`, weir-node's word to the CNI.
//! - [`services`]: the service maps, programmed one frontend at a time.
//! - [`attach`]: attach the pinned programs to a pod's host-side veth and pin
//!   the links (the CNI binary), detach them again.
pub mod attach;
pub mod bpffs;
pub mod endpoint_info;
pub mod error;
pub mod loader;
pub mod maps;
pub mod node_info;
pub mod object;
pub mod paths;
pub mod services;

pub use error::{Error, Result};
pub use paths::PinLayout;
pub use weir_common as common;
