//! `cni-conformance`: the CNI specification checked against any plugin.
//!
//! The suite acts as a container runtime with libcni's semantics (see
//! [`runtime`]): it runs the plugin (or the chain of a conflist) with the
//! `CNI_*` environment and the config on stdin, rewrites `name` and
//! `cniVersion` per version under test and injects `prevResult` for CHECK and
//! DEL. Every case ([`cases`]) records pass, fail or not-applicable with a
//! message and the spec's level (MUST or SHOULD); [`report`] prints the
//! table, writes JUnit XML, markdown or JSON, and compares the outcomes with
//! an expectation file.
//!
//! Everything a run touches is its own: a "host" network namespace in which
//! the plugins run (so bridges, host veths and routes never reach the
//! machine), one namespace per case, a temporary state directory substituted
//! for `${RUN_DIR}` in the config, and, for weir, a datapath pin root of its
//! own. All of it is removed by `Drop` guards, also when a case fails.

pub mod cases;
pub mod observe;
pub mod report;
pub mod runtime;
pub mod schema;
pub mod weir;

use std::{
    fmt,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The versions tested unless `--versions` says otherwise.
pub const DEFAULT_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How strongly the spec asks for what a case checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Must,
    Should,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
        })
    }
}

/// What happened to a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The case does not apply to this plugin (for example, it does not
    /// claim the version under test).
    NotApplicable,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::NotApplicable => "not-applicable",
        })
    }
}

/// One case's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    /// `<group>.<name>` or `<group>.<name>@<version>`.
    pub id: String,
    pub level: Level,
    /// Where the spec says so.
    pub spec: String,
    pub outcome: Outcome,
    pub message: String,
    pub millis: u64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The plugin types of the chain, e.g. `ptp` or `bridge+portmap`.
    pub plugin: String,
    /// The network name of the config.
    pub network: String,
    /// The versions under test that every plugin of the chain claims.
    pub claimed: Vec<String>,
    pub versions: Vec<String>,
    pub cases: Vec<CaseResult>,
    pub millis: u64,
    /// The prefix of the run's namespaces, container ids and state
    /// directory (`cc-<hex>-`).
    #[serde(default)]
    pub prefix: String,
}

impl Report {
    pub fn case(&self, id: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.id == id)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the plugin executables are (CNI_PATH).
    pub plugin_dir: PathBuf,
    /// A plugin config or a conflist, with `${RUN_DIR}` (and, with
    /// `weir_node`, `${PIN_ROOT}` and `${NODE_INFO}`) placeholders.
    pub config: Value,
    /// Versions under test, oldest first.
    pub versions: Vec<String>,
    /// How many ADDs run at once in the parallel case.
    pub parallel: usize,
    /// Prepare a weir node: load the datapath into a pin root of the run's
    /// own and write a node.json with these pod CIDRs.
    pub weir_node: Option<Vec<ipnetwork::IpNetwork>>,
    /// Print each case as it finishes (to stderr).
    pub verbose: bool,
}

impl Options {
    pub fn new(plugin_dir: impl Into<PathBuf>, config: Value) -> Options {
        Options {
            plugin_dir: plugin_dir.into(),
            config,
            versions: DEFAULT_VERSIONS.iter().map(|s| (*s).to_owned()).collect(),
            parallel: 8,
            weir_node: None,
            verbose: false,
        }
    }
}

/// Runs the whole suite.
pub fn run(options: &Options) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let rt = runtime::Runtime::new(options)?;
    let mut report = cases::run_all(&rt, options);
    report.millis = started.elapsed().as_millis() as u64;
    Ok(report)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks the run to stop: cases not yet started are recorded as failed
/// without running, and the guards clean up as usual. Async-signal-safe.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}
