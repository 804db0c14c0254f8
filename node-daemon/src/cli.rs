//! The command line: its definition (public, so that other crates, such as
//! the deploy manifests' tests, can check arguments against it) and the
//! dispatch to `run` (the daemon), the inspection commands (`bpf ... list`,
//! `status`) that read the pins directly, `load` and `uninstall`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tracing::info;
use tracing_subscriber::EnvFilter;
use weir_datapath::{PinLayout, bpffs, endpoint_info, loader, node_info, object};

pub use crate::inspect::Output;
use crate::{
    daemon::{self, NodeSource, RunConfig},
    inspect, masquerade, routes,
};

#[derive(Parser, Debug)]
#[command(name = "weir-node", about = "weir's node daemon", version)]
pub struct Cli {
    #[command(flatten)]
    pub paths: Paths,
    /// Log as JSON lines (stderr) instead of text.
    #[arg(long, global = true, env = "WEIR_LOG_JSON")]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

/// Where weir's node state lives; shared by every command.
#[derive(Args, Clone, Debug)]
pub struct Paths {
    /// bpffs directory that holds weir's pins.
    #[arg(long, global = true, env = "WEIR_PIN_ROOT", default_value = weir_datapath::paths::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// The node info file weir-node writes for the CNI.
    #[arg(long, global = true, env = "WEIR_NODE_JSON", default_value = node_info::DEFAULT_PATH)]
    pub node_json: PathBuf,
    /// The directory of the CNI's endpoint records.
    #[arg(long, global = true, env = "WEIR_ENDPOINTS_DIR", default_value = endpoint_info::DEFAULT_DIR)]
    pub endpoints_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon: load the datapath, then program it from the node
    /// source until SIGTERM/SIGINT (which leave the datapath in place).
    Run(RunArgs),
    /// Read the pinned maps.
    Bpf {
        #[command(subcommand)]
        map: BpfCmd,
    },
    /// Pins, ABI, object digest, program ids, node info and map sizes.
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Load the datapath and pin it (reusing existing map pins), then exit.
    Load,
    /// Remove every pin (pod links detach with them), weir's routes and the
    /// node info file. Pods lose connectivity. Idempotent.
    Uninstall,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// This node's name, as in its Node object.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// MTU for pod interfaces [default: the uplink's, else 1500].
    #[arg(long, env = "WEIR_MTU")]
    pub mtu: Option<u32>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:9962")]
    pub listen: SocketAddr,
    /// Read Node objects from this directory of YAML manifests instead of
    /// the Kubernetes API.
    #[arg(long, env = "WEIR_NODES_DIR", conflicts_with = "kubeconfig")]
    pub nodes_dir: Option<PathBuf>,
    /// Kubeconfig for the API server [default: in-cluster, or $KUBECONFIG].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How often the manifest directory is read, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub nodes_poll_ms: u64,
    /// Seconds between full reconciles of the NODES map and node routes
    /// (they also run on every change of the node set).
    #[arg(long, env = "WEIR_RESYNC_SECONDS", default_value_t = 30)]
    pub resync_seconds: u64,
    /// Seconds between endpoint hygiene sweeps (one also runs at start).
    #[arg(long, env = "WEIR_HYGIENE_SECONDS", default_value_t = 60)]
    pub hygiene_seconds: u64,
    /// Do not install the nftables masquerade rule for traffic leaving the
    /// cluster (when something else masquerades pod traffic).
    #[arg(long, env = "WEIR_NO_MASQUERADE")]
    pub no_masquerade: bool,
}

#[derive(Subcommand, Debug)]
pub enum BpfCmd {
    /// The ENDPOINTS map: pods on this node.
    Endpoints {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// The NODES map: remote pod CIDRs and their nodes.
    Nodes {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Per-endpoint traffic and drop counters.
    Counters {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// The SERVICES and BACKENDS maps: every frontend with its backends.
    Services {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// The CONNTRACK map: tracked service flows and their backends.
    Ct {
        #[command(subcommand)]
        cmd: ListCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum ListCmd {
    /// List the entries.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs the command `cli` describes.
pub fn dispatch(cli: Cli) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let layout = PinLayout::new(&cli.paths.pin_root);
    match cli.command {
        Cmd::Run(args) => run(cli.paths, layout, args),
        Cmd::Bpf { map } => {
            let text = match map {
                BpfCmd::Endpoints {
                    cmd: ListCmd::List { output },
                } => inspect::endpoints(&layout, &cli.paths.endpoints_dir, output),
                BpfCmd::Nodes {
                    cmd: ListCmd::List { output },
                } => inspect::nodes(&layout, output),
                BpfCmd::Counters {
                    cmd: ListCmd::List { output },
                } => inspect::counters(&layout, &cli.paths.endpoints_dir, output),
                BpfCmd::Services {
                    cmd: ListCmd::List { output },
                } => inspect::services(&layout, output),
                BpfCmd::Ct {
                    cmd: ListCmd::List { output },
                } => inspect::conntrack(&layout, output),
            }?;
            print!("{text}");
            Ok(())
        }
        Cmd::Status { output } => {
            let status = inspect::status(&layout, &cli.paths.node_json);
            print!("{}", inspect::render_status(&status, output)?);
            if status.pins_present {
                Ok(())
            } else {
                bail!("datapath not loaded")
            }
        }
        Cmd::Load => {
            if let Some(mountpoint) = cli.paths.pin_root.parent() {
                bpffs::ensure_mounted(mountpoint).context("mounting bpffs")?;
            }
            let report = loader::load(&layout, object::OBJECT).context("loading the datapath")?;
            println!("{report:#?}");
            Ok(())
        }
        Cmd::Uninstall => uninstall(&cli.paths, &layout),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(paths: Paths, layout: PinLayout, args: RunArgs) -> Result<()> {
    let source = match args.nodes_dir {
        Some(dir) => NodeSource::Dir {
            dir,
            poll: Duration::from_millis(args.nodes_poll_ms.max(10)),
        },
        None => NodeSource::Kube {
            kubeconfig: args.kubeconfig,
        },
    };
    let cfg = RunConfig {
        layout,
        node_name: args.node_name,
        node_json: paths.node_json,
        endpoints_dir: paths.endpoints_dir,
        mtu: args.mtu,
        listen: args.listen,
        source,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        hygiene_interval: Duration::from_secs(args.hygiene_seconds.max(1)),
        masquerade: !args.no_masquerade,
    };
    runtime()?.block_on(daemon::run(cfg, shutdown_signal()))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
}

fn uninstall(paths: &Paths, layout: &PinLayout) -> Result<()> {
    loader::unpin_all(layout).context("removing pins")?;
    match masquerade::remove() {
        Ok(_) => {}
        // No nft on this node: weir could not have installed the rule.
        Err(masquerade::MasqueradeError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!("nft is not installed; no masquerade rule to remove");
        }
        Err(e) => return Err(e).context("removing the masquerade rule"),
    }
    let removed = runtime()?.block_on(async {
        let routes = routes::Routes::connect()?;
        routes.remove_all().await
    })?;
    match std::fs::remove_file(&paths.node_json) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing {}", paths.node_json.display()));
        }
    }
    info!(routes = removed, pin_root = %layout.root().display(), "weir uninstalled from this node");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn daemonset_style_arguments_parse() {
        let cli = Cli::try_parse_from([
            "weir-node",
            "run",
            "--node-name",
            "n1",
            "--listen",
            "0.0.0.0:9962",
            "--pin-root",
            "/sys/fs/bpf/weir",
            "--nodes-dir",
            "/etc/weir/nodes",
        ])
        .unwrap();
        assert_eq!(cli.paths.pin_root, PathBuf::from("/sys/fs/bpf/weir"));
        let Cmd::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.node_name, "n1");
        assert_eq!(args.nodes_dir, Some(PathBuf::from("/etc/weir/nodes")));
        assert!(!args.no_masquerade);

        // The two node sources exclude each other; unknown flags are refused.
        assert!(
            Cli::try_parse_from([
                "weir-node",
                "run",
                "--node-name",
                "n1",
                "--nodes-dir",
                "d",
                "--kubeconfig",
                "k"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["weir-node", "run", "--node-name", "n", "--bogus"]).is_err());
        let cli = Cli::try_parse_from(["weir-node", "bpf", "nodes", "list", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Bpf {
                map: BpfCmd::Nodes {
                    cmd: ListCmd::List {
                        output: Output::Json
                    }
                }
            }
        ));
    }
}
