//! `weir-node`: owns the pinned eBPF datapath on a node.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use weir_datapath::{PinLayout, bpffs, loader, object};

#[derive(Parser)]
#[command(name = "weir-node", about = "weir's node daemon")]
struct Cli {
    /// bpffs directory that holds weir's pins.
    #[arg(long, env = "WEIR_PIN_ROOT", default_value = weir_datapath::paths::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the datapath and pin it (reusing existing map pins), then exit.
    Load,
    /// Remove every pin weir made (pods lose their programs).
    Uninstall,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let layout = PinLayout::new(&cli.pin_root);
    match cli.command {
        Cmd::Load => {
            if let Some(mountpoint) = cli.pin_root.parent() {
                bpffs::ensure_mounted(mountpoint).context("mounting bpffs")?;
            }
            let report = loader::load(&layout, object::OBJECT).context("loading the datapath")?;
            println!("{report:#?}");
        }
        Cmd::Uninstall => loader::unpin_all(&layout).context("removing pins")?,
    }
    Ok(())
}
