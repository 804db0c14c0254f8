//! `weir-node`: owns the pinned eBPF datapath on a node and programs it.
//!
//! - [`cli`]: the command line and its dispatch.
//! - `daemon`: `run`, wiring the pieces below until shutdown.
//! - `nodes`, `source`: Node objects (API watch or manifest directory) into
//!   the node set.
//! - `reconcile`, `routes`: the `NODES` map and node routes from the node set.
//! - `services`: Services and EndpointSlices (API watch or manifest
//!   directory) into the service maps; conntrack sweeping.
//! - `hygiene`: stale endpoint state removed.
//! - `masquerade`: the one nftables rule.
//! - `metrics`, `http`: `/metrics`, `/healthz`, `/readyz`.
//! - `inspect`: `bpf ... list` and `status`.

pub mod cli;
mod daemon;
mod http;
mod hygiene;
mod inspect;
mod masquerade;
mod metrics;
mod nodes;
mod reconcile;
mod routes;
mod services;
mod source;
