//! `cni-conformance`: runs the CNI specification's cases against any plugin,
//! as a runtime would, and says which pass.
//!
//! ```text
//! cni-conformance --plugin-dir /usr/lib/cni --config ptp.json \
//!     [--versions 0.3.1,0.4.0,1.0.0,1.1.0] [--report junit.xml] [--report report.md] \
//!     [--expect expect.json]
//! cni-conformance --side-by-side weir=weir.json --side-by-side ptp=ptp.json
//! ```
//!
//! Exit status: 0 when every outcome is the expected one, 1 when some differ,
//! 2 when the run could not be made, 130 when interrupted (SIGINT or
//! SIGTERM stop it between cases; what it made is removed first).

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;
use weir_conformance::suite::{self, Options, report};

#[derive(Parser, Debug)]
#[command(
    name = "cni-conformance",
    about = "Check a CNI plugin against the CNI specification"
)]
struct Args {
    /// Where the plugin executables are (also passed as CNI_PATH).
    #[arg(long, required_unless_present_any = ["side_by_side", "list_cases"])]
    plugin_dir: Option<PathBuf>,
    /// A plugin config or a conflist. `${RUN_DIR}` in any string becomes the
    /// run's state directory (point host-local's dataDir there).
    #[arg(long, required_unless_present_any = ["side_by_side", "list_cases"])]
    config: Option<PathBuf>,
    /// Spec versions to test, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = suite::DEFAULT_VERSIONS.map(String::from))]
    versions: Vec<String>,
    /// Write a report: `.xml` JUnit, `.md` markdown, `.json` the raw report.
    /// May be repeated.
    #[arg(long)]
    report: Vec<PathBuf>,
    /// Expected outcomes (JSON: case id or pattern → outcome). Without it,
    /// every case must pass.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// How many ADDs run at once in the parallel case.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Prepare a weir node for the run: load the datapath into a pin root of
    /// its own and write a node.json; the config may use `${PIN_ROOT}` and
    /// `${NODE_INFO}`.
    #[arg(long)]
    weir_node: bool,
    /// The weir node's pod CIDRs, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = suite::weir::DEFAULT_POD_CIDRS.map(String::from))]
    pod_cidrs: Vec<String>,
    /// Print each case as it finishes.
    #[arg(short, long)]
    verbose: bool,
    /// Print the cases as a markdown table and exit.
    #[arg(long)]
    list_cases: bool,
    /// Print JSON reports side by side as a markdown table and exit:
    /// `NAME=REPORT.json`, repeated.
    #[arg(long, value_name = "NAME=REPORT.json")]
    side_by_side: Vec<String>,
}

extern "C" fn on_signal(_: libc::c_int) {
    suite::interrupt();
}

/// SIGINT and SIGTERM stop the run between cases instead of killing it, so
/// that the guards remove the namespaces, state and pins.
fn catch_signals() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("catch {sig}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = catch_signals() {
        eprintln!("cni-conformance: {e:#}");
        return ExitCode::from(2);
    }
    let outcome = run(Args::parse());
    if suite::interrupted() {
        eprintln!("cni-conformance: interrupted; cleaned up");
        return ExitCode::from(130);
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cni-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<bool> {
    if args.list_cases {
        print!("{}", report::case_table());
        return Ok(true);
    }
    if !args.side_by_side.is_empty() {
        let mut runs = Vec::new();
        for s in &args.side_by_side {
            let (name, path) = s
                .split_once('=')
                .with_context(|| format!("{s}: expected NAME=REPORT.json"))?;
            let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
            let r: suite::Report =
                serde_json::from_str(&text).with_context(|| format!("parse {path}"))?;
            runs.push((name.to_owned(), r));
        }
        print!("{}", report::side_by_side(&runs));
        return Ok(true);
    }
    let plugin_dir = args.plugin_dir.context("--plugin-dir")?;
    let config_path = args.config.context("--config")?;
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("read {}", config_path.display()))?;
    let config =
        serde_json::from_str(&text).with_context(|| format!("parse {}", config_path.display()))?;
    for v in &args.versions {
        if v.split('.').count() != 3 || v.split('.').any(|p| p.parse::<u32>().is_err()) {
            bail!("--versions: {v} is not a spec version like 1.0.0");
        }
    }
    let weir_node = if args.weir_node {
        let cidrs = args
            .pod_cidrs
            .iter()
            .map(|c| c.parse().with_context(|| format!("--pod-cidrs: {c}")))
            .collect::<Result<Vec<_>>>()?;
        Some(cidrs)
    } else {
        None
    };
    let expect = match &args.expect {
        Some(p) => report::Expectations::load(p)?,
        None => report::Expectations::default(),
    };
    let options = Options {
        plugin_dir,
        config,
        versions: args.versions,
        parallel: args.parallel.max(1),
        weir_node,
        verbose: args.verbose,
    };
    let report = suite::run(&options)?;
    print!("{}", report::summary(&report, &expect));
    for path in &args.report {
        report::write(path, &report, &expect)?;
    }
    Ok(report::compare(&report, &expect).is_empty())
}
