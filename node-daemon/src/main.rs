//! `weir-node`: parse the command line and dispatch.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    weir_node::cli::dispatch(weir_node::cli::Cli::parse())
}
