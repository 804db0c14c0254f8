//! The cases. Each has an id, the spec's level and a reference; each owns
//! its namespaces and containers ([`Attachment`] DELs and removes them on
//! drop), so a case that fails leaves nothing for the next one.
//!
//! Order of a run: VERSION (which decides the claimed versions); for every
//! version under test the ADD / CHECK / DEL cases (not applicable when the
//! plugin does not claim the version); then, at the newest claimed version,
//! bad inputs and parallel ADDs; then STATUS and GC at 1.1.0.

use std::{collections::BTreeSet, time::Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    CaseResult, Level, Options, Outcome, Report, millis,
    observe::{self, Snapshot},
    runtime::{Attachment, Call, Runtime, clip, plugin_failure, version_lt},
    schema,
};

/// A case's definition.
pub struct Def {
    pub name: &'static str,
    pub level: Level,
    pub spec: &'static str,
    /// The oldest spec version in which the case exists (per-version cases).
    pub since: &'static str,
    pub what: &'static str,
}

const fn def(
    name: &'static str,
    level: Level,
    spec: &'static str,
    since: &'static str,
    what: &'static str,
) -> Def {
    Def {
        name,
        level,
        spec,
        since,
        what,
    }
}

use Level::{Must, Should};

/// Run once per run.
pub const GLOBAL: &[Def] = &[def(
    "version.output",
    Must,
    "§2 VERSION; §5 Version success",
    "0.3.0",
    "VERSION exits 0 and prints JSON with cniVersion and supportedVersions, for every plugin of the chain",
)];

/// Run for every version under test.
pub const PER_VERSION: &[Def] = &[
    def(
        "version.claims",
        Must,
        "§2 VERSION",
        "0.3.0",
        "every plugin of the chain lists the version in supportedVersions (not applicable otherwise)",
    ),
    def(
        "add.result",
        Must,
        "§2 ADD; §5 ADD success",
        "0.3.0",
        "ADD succeeds and its result has the shape of the version's result type",
    ),
    def(
        "add.netns-matches",
        Must,
        "§2 ADD (CNI_IFNAME); §5 interfaces, ips, routes",
        "0.3.0",
        "the interfaces (with their MACs), addresses and routes of the result are in the namespaces; the container's interface is CNI_IFNAME (net1 here, not the usual eth0)",
    ),
    def(
        "check.after-add",
        Must,
        "§2 CHECK: must handle CHECK immediately after ADD",
        "0.4.0",
        "CHECK with the ADD result as prevResult succeeds",
    ),
    def(
        "check.missing-address",
        Should,
        "§2 CHECK: error if an address of prevResult is missing",
        "0.4.0",
        "CHECK fails after the container's address was removed",
    ),
    def(
        "check.missing-interface",
        Should,
        "§2 CHECK: error if an interface of prevResult is missing",
        "0.4.0",
        "CHECK fails after the container's interface was deleted",
    ),
    def(
        "del.after-add",
        Must,
        "§2 DEL",
        "0.3.0",
        "DEL of an added container succeeds",
    ),
    def(
        "del.releases",
        Should,
        "§2 DEL: should release all resources held by the container",
        "0.3.0",
        "after DEL the container's interface, its host-side interfaces and any state file naming it are gone",
    ),
    def(
        "del.second",
        Should,
        "§2 DEL: complete DEL without error even if resources are missing",
        "0.3.0",
        "a second DEL of the same container succeeds",
    ),
    def(
        "del.empty-netns",
        Should,
        "§2 DEL: without CNI_NETNS, clean up as much as possible and succeed",
        "0.3.0",
        "after the namespace is gone, DEL with CNI_NETNS empty succeeds and releases the container's state",
    ),
    def(
        "del.netns-gone",
        Should,
        "§2 DEL: succeed and release the allocation even if the namespace no longer exists",
        "0.3.0",
        "after the namespace is gone, DEL with its old path succeeds and releases the container's state",
    ),
    def(
        "del.no-prev-result",
        Should,
        "§2 DEL: without prevResult, clean up as much as possible and succeed",
        "0.4.0",
        "DEL without prevResult succeeds and releases the container's state",
    ),
    def(
        "del.unknown-container",
        Should,
        "§2 DEL: complete DEL without error even if resources are missing",
        "0.3.0",
        "DEL of a container that was never added succeeds and creates nothing",
    ),
];

/// Run once, at the newest claimed version.
pub const AT_NEWEST: &[Def] = &[
    def(
        "input.no-command",
        Must,
        "§2 Parameters (CNI_COMMAND); §5 error 4",
        "0.3.0",
        "no CNI_COMMAND: error 4, nothing created",
    ),
    def(
        "input.unknown-command",
        Must,
        "§2 Parameters (CNI_COMMAND); §5 error 4",
        "0.3.0",
        "CNI_COMMAND=FROB: error 4, nothing created",
    ),
    def(
        "input.no-container-id",
        Must,
        "§2 Parameters (CNI_CONTAINERID); §5 error 4",
        "0.3.0",
        "ADD without CNI_CONTAINERID: error 4, nothing created",
    ),
    def(
        "input.bad-container-id",
        Must,
        "§2 Parameters (CNI_CONTAINERID must start with an alphanumeric, then [A-Za-z0-9_.-]); §5 error 4",
        "0.3.0",
        "ADD with CNI_CONTAINERID=-bad/id: error 4, nothing created",
    ),
    def(
        "input.no-netns",
        Must,
        "§2 Parameters (CNI_NETNS required for ADD); §5 error 4",
        "0.3.0",
        "ADD without CNI_NETNS: error 4, nothing created",
    ),
    def(
        "input.no-ifname",
        Must,
        "§2 Parameters (CNI_IFNAME required for ADD); §5 error 4",
        "0.3.0",
        "ADD without CNI_IFNAME: error 4, nothing created",
    ),
    def(
        "input.bad-ifname",
        Must,
        "§2 Parameters (CNI_IFNAME: under 16 characters, no / : or whitespace); §5 error 4",
        "0.3.0",
        "ADD with CNI_IFNAME=bad/if:name0123: error 4, nothing created",
    ),
    def(
        "input.unsupported-version",
        Should,
        "§5 Error (code 1): an unsupported cniVersion should give error 1",
        "0.3.0",
        "ADD with cniVersion 9.9.9: error 1, nothing created",
    ),
    def(
        "input.garbage-stdin",
        Should,
        "§5 error 6 (failed to decode content)",
        "0.3.0",
        "ADD with stdin that is not JSON: error 6, nothing created",
    ),
    def(
        "parallel.add-del",
        Must,
        "§3 Lifecycle: parallel operations for different containers are allowed",
        "0.3.0",
        "N ADDs for distinct containers at once all succeed with distinct addresses; then N DELs at once succeed and release everything",
    ),
];

/// Run at 1.1.0 when it is under test.
pub const V1_1: &[Def] = &[
    def(
        "status.ready",
        Must,
        "§2 STATUS: exit 0 when ready for ADD",
        "1.1.0",
        "STATUS succeeds for every plugin of the chain",
    ),
    def(
        "gc.keeps-valid",
        Must,
        "§2 GC: attachments in cni.dev/valid-attachments are not touched",
        "1.1.0",
        "GC succeeds and a container listed as valid keeps its state and still passes CHECK",
    ),
    def(
        "gc.releases-stale",
        Should,
        "§2 GC: release resources of attachments not in cni.dev/valid-attachments",
        "1.1.0",
        "GC releases the state of a container not listed as valid (not applicable when the plugin keeps no observable state)",
    ),
];

/// Every case definition, for the docs and for checking expectation files.
pub fn all_defs() -> impl Iterator<Item = &'static Def> {
    GLOBAL
        .iter()
        .chain(PER_VERSION)
        .chain(AT_NEWEST)
        .chain(V1_1)
}

pub fn find_def(name: &str) -> &'static Def {
    all_defs()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// A case's verdict.
pub enum Verdict {
    Pass(String),
    Fail(String),
    NotApplicable(String),
}

struct Cx<'a> {
    rt: &'a Runtime,
    verbose: bool,
    results: Vec<CaseResult>,
}

impl Cx<'_> {
    fn record(&mut self, name: &str, version: Option<&str>, started: Instant, v: Result<Verdict>) {
        let d = find_def(name);
        let (outcome, message) = match v {
            Ok(Verdict::Pass(m)) => (Outcome::Pass, m),
            Ok(Verdict::Fail(m)) => (Outcome::Fail, m),
            Ok(Verdict::NotApplicable(m)) => (Outcome::NotApplicable, m),
            Err(e) => (Outcome::Fail, format!("{e:#}")),
        };
        let id = match version {
            Some(v) => format!("{name}@{v}"),
            None => name.to_owned(),
        };
        let r = CaseResult {
            id,
            level: d.level,
            spec: d.spec.to_owned(),
            outcome,
            message: clip(&message.replace('\n', " "), 600),
            millis: millis(started.elapsed()),
        };
        if self.verbose {
            eprintln!("{:<36} {:<14} {}", r.id, r.outcome, clip(&r.message, 120));
        }
        self.results.push(r);
    }

    fn run(&mut self, name: &str, version: Option<&str>, f: impl FnOnce() -> Result<Verdict>) {
        let started = Instant::now();
        let v = if super::interrupted() {
            Ok(Verdict::Fail("interrupted before it ran".into()))
        } else {
            f()
        };
        self.record(name, version, started, v);
    }

    fn not_applicable(&mut self, name: &str, version: Option<&str>, why: &str) {
        self.record(
            name,
            version,
            Instant::now(),
            Ok(Verdict::NotApplicable(why.to_owned())),
        );
    }
}

pub fn run_all(rt: &Runtime, opts: &Options) -> Report {
    let mut cx = Cx {
        rt,
        verbose: opts.verbose,
        results: Vec::new(),
    };
    let newest_tested = opts
        .versions
        .last()
        .cloned()
        .unwrap_or_else(|| "1.1.0".into());

    // VERSION, once per plugin type of the chain.
    let mut supported: Option<BTreeSet<String>> = None;
    cx.run("version.output", None, || {
        let mut msgs = Vec::new();
        let mut all: Option<BTreeSet<String>> = None;
        for kind in rt.types() {
            let reply = rt.version_of(&kind, &newest_tested)?;
            if !reply.success {
                bail!("VERSION of {kind} failed: {reply}");
            }
            let j = reply
                .json
                .as_ref()
                .with_context(|| format!("VERSION of {kind} printed no JSON: {reply}"))?;
            j["cniVersion"]
                .as_str()
                .with_context(|| format!("VERSION of {kind}: no cniVersion in {j}"))?;
            let list = j["supportedVersions"]
                .as_array()
                .with_context(|| format!("VERSION of {kind}: no supportedVersions in {j}"))?;
            let mut set = BTreeSet::new();
            for v in list {
                set.insert(
                    v.as_str()
                        .with_context(|| format!("VERSION of {kind}: {v} is not a string"))?
                        .to_owned(),
                );
            }
            msgs.push(format!(
                "{kind}: {}",
                list.iter()
                    .map(|v| v.as_str().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            all = Some(match all {
                None => set,
                Some(a) => a.intersection(&set).cloned().collect(),
            });
        }
        supported = all;
        Ok(Verdict::Pass(msgs.join("; ")))
    });
    let supported = supported.unwrap_or_default();
    let claimed: Vec<String> = opts
        .versions
        .iter()
        .filter(|v| supported.contains(*v))
        .cloned()
        .collect();

    for v in &opts.versions {
        if claimed.contains(v) {
            per_version(&mut cx, v);
        } else {
            let why = format!("the plugin does not claim {v}");
            for d in PER_VERSION.iter().filter(|d| !version_lt(v, d.since)) {
                cx.not_applicable(d.name, Some(v), &why);
            }
        }
    }

    match claimed.last() {
        Some(newest) => {
            bad_inputs(&mut cx, newest);
            parallel(&mut cx, newest, opts.parallel);
        }
        None => {
            for d in AT_NEWEST {
                cx.not_applicable(
                    d.name,
                    None,
                    "the plugin claims none of the versions under test",
                );
            }
        }
    }

    if opts.versions.iter().any(|v| v == "1.1.0") {
        if claimed.iter().any(|v| v == "1.1.0") {
            v1_1(&mut cx);
        } else {
            for d in V1_1 {
                cx.not_applicable(d.name, Some("1.1.0"), "the plugin does not claim 1.1.0");
            }
        }
    }

    Report {
        plugin: rt.types().join("+"),
        network: rt.network().to_owned(),
        claimed,
        versions: opts.versions.clone(),
        cases: cx.results,
        millis: 0,
        prefix: rt.prefix.clone(),
    }
}

/// A result's compact form for messages.
fn brief(v: &Value) -> String {
    clip(&v.to_string(), 400)
}

fn per_version(cx: &mut Cx<'_>, v: &str) {
    let rt = cx.rt;
    cx.run("version.claims", Some(v), || {
        Ok(Verdict::Pass(format!(
            "{} claims {v}",
            rt.types().join(", ")
        )))
    });
    let has_check = !version_lt(v, "0.4.0");

    // A: ADD, shape, reality, CHECK, DEL, what DEL left, DEL again; with
    // an interface name other than eth0, so that a plugin that ignores
    // CNI_IFNAME shows.
    let mut a = match Attachment::new(rt, v, "a") {
        Ok(mut a) => {
            a.ifname = "net1".to_owned();
            Some(a)
        }
        Err(e) => {
            // Every case of the lifecycle is reported, as failed.
            let msg = format!("could not create the namespace: {e:#}");
            let mut names = vec!["add.result", "add.netns-matches"];
            if has_check {
                names.push("check.after-add");
            }
            names.extend(["del.after-add", "del.releases", "del.second"]);
            for name in names {
                cx.run(name, Some(v), || Ok(Verdict::Fail(msg.clone())));
            }
            None
        }
    };
    if let Some(a) = a.as_mut() {
        cx.run("add.result", Some(v), || {
            let r = a.add()?;
            let errs = schema::check_result(r, v);
            if errs.is_empty() {
                Ok(Verdict::Pass(brief(r)))
            } else {
                Ok(Verdict::Fail(format!(
                    "{}; result {}",
                    errs.join("; "),
                    brief(r)
                )))
            }
        });
        cx.run("add.netns-matches", Some(v), || {
            let r = a.result.as_ref().context("ADD failed")?;
            let errs = observe::result_vs_netns(rt, r, a.ns(), &a.ifname)?;
            if errs.is_empty() {
                Ok(Verdict::Pass(
                    "interfaces, MACs, addresses and routes are in place".into(),
                ))
            } else {
                Ok(Verdict::Fail(errs.join("; ")))
            }
        });
        if has_check {
            cx.run("check.after-add", Some(v), || {
                a.result.as_ref().context("ADD failed")?;
                a.check()?;
                Ok(Verdict::Pass("CHECK succeeded".into()))
            });
        }
        cx.run("del.after-add", Some(v), || {
            a.result.as_ref().context("ADD failed")?;
            a.del()?;
            Ok(Verdict::Pass("DEL succeeded".into()))
        });
        cx.run("del.releases", Some(v), || {
            if !a.deleted {
                bail!("DEL failed");
            }
            let left = observe::leftovers_after_del(
                rt,
                a.result.as_ref(),
                a.netns.as_ref(),
                &a.ifname,
                &a.container_id,
            )?;
            Ok(released(
                left,
                "the interfaces and the container's state are gone",
            ))
        });
        cx.run("del.second", Some(v), || {
            a.result.as_ref().context("ADD failed")?;
            a.del()?;
            Ok(Verdict::Pass("the second DEL succeeded".into()))
        });
    }
    drop(a);

    // B: the namespace goes away, then DEL with CNI_NETNS="".
    cx.run("del.empty-netns", Some(v), || {
        let mut b = Attachment::new(rt, v, "b")?;
        b.add().context("ADD")?;
        b.netns.take();
        b.del().context("DEL with CNI_NETNS empty")?;
        let left = observe::leftovers_after_del(rt, None, None, &b.ifname, &b.container_id)?;
        Ok(released(
            left,
            "DEL succeeded and released the container's state",
        ))
    });

    // B': the namespace goes away, then DEL with its old path.
    cx.run("del.netns-gone", Some(v), || {
        let mut b = Attachment::new(rt, v, "g")?;
        b.add().context("ADD")?;
        let path = b.netns_path();
        b.netns.take();
        let mut call = b.call("DEL");
        call.netns = Some(path.clone());
        rt.del(v, &call, b.result.as_ref())
            .with_context(|| format!("DEL with CNI_NETNS={path}, which no longer exists"))?;
        b.deleted = true;
        let left = observe::leftovers_after_del(rt, None, None, &b.ifname, &b.container_id)?;
        Ok(released(
            left,
            "DEL succeeded and released the container's state",
        ))
    });

    // C: DEL without prevResult.
    if has_check {
        cx.run("del.no-prev-result", Some(v), || {
            let mut c = Attachment::new(rt, v, "c")?;
            let result = c.add().context("ADD")?.clone();
            c.result = None;
            c.del().context("DEL without prevResult")?;
            c.result = Some(result);
            let left = observe::leftovers_after_del(
                rt,
                c.result.as_ref(),
                c.netns.as_ref(),
                &c.ifname,
                &c.container_id,
            )?;
            Ok(released(left, "DEL succeeded and released everything"))
        });
    }

    // D: DEL of a container that was never added.
    cx.run("del.unknown-container", Some(v), || {
        let mut d = Attachment::new(rt, v, "d")?;
        let before = Snapshot::take(rt, d.ns())?;
        d.del().context("DEL")?;
        let after = Snapshot::take(rt, d.ns())?;
        let made = before.created(&after);
        if made.is_empty() {
            Ok(Verdict::Pass("DEL succeeded".into()))
        } else {
            Ok(Verdict::Fail(format!("DEL created {}", made.join(", "))))
        }
    });

    // E, F: CHECK after tampering.
    if has_check {
        cx.run("check.missing-address", Some(v), || {
            let mut e = Attachment::new(rt, v, "e")?;
            let r = e.add().context("ADD")?.clone();
            let addr = sandbox_address(&r, &e.ifname).context("the result has no address")?;
            e.ns().ip(&["addr", "del", &addr, "dev", &e.ifname])?;
            tampered(e.check(), &format!("removed {addr} from {}", e.ifname))
        });
        cx.run("check.missing-interface", Some(v), || {
            let mut f = Attachment::new(rt, v, "f")?;
            f.add().context("ADD")?;
            f.ns().ip(&["link", "del", &f.ifname])?;
            tampered(f.check(), &format!("deleted {}", f.ifname))
        });
    }
}

fn released(left: Vec<String>, ok: &str) -> Verdict {
    if left.is_empty() {
        Verdict::Pass(ok.to_owned())
    } else {
        Verdict::Fail(format!("left behind: {}", left.join("; ")))
    }
}

fn tampered(check: Result<()>, what: &str) -> Result<Verdict> {
    match check {
        Ok(()) => Ok(Verdict::Fail(format!("{what}, yet CHECK succeeded"))),
        Err(e) => match plugin_failure(&e) {
            Some(f) => Ok(Verdict::Pass(format!("{what}; CHECK failed: {}", f.reply))),
            None => Err(e),
        },
    }
}

/// The first address of the result on the sandbox interface `ifname`.
fn sandbox_address(r: &Value, ifname: &str) -> Option<String> {
    let ifaces = r["interfaces"].as_array();
    r["ips"].as_array()?.iter().find_map(|ip| {
        let on_it = match ip["interface"].as_u64() {
            Some(i) => ifaces
                .and_then(|l| l.get(i as usize))
                .is_some_and(|iface| iface["name"] == ifname),
            None => true,
        };
        if on_it {
            ip["address"].as_str().map(str::to_owned)
        } else {
            None
        }
    })
}

/// One bad-input case: `call` (and the config at `version`, or `raw` stdin)
/// must fail with `code` and create nothing.
fn bad_input(
    cx: &mut Cx<'_>,
    name: &str,
    (version, config_version): (&str, &str),
    code: u64,
    make: impl FnOnce(&mut Call),
    raw: Option<&[u8]>,
) {
    let rt = cx.rt;
    cx.run(name, None, || {
        let mut att = Attachment::new(rt, version, "x")?;
        let mut call = att.call("ADD");
        make(&mut call);
        let before = Snapshot::take(rt, att.ns())?;
        // The chain stops at its first plugin when the call is bad, so only
        // that one runs.
        let kind = rt.types().into_iter().next().context("empty chain")?;
        let stdin = match raw {
            Some(bytes) => bytes.to_vec(),
            None => serde_json::to_vec(&rt.plugin_config(
                config_version,
                0,
                None,
                &serde_json::Map::new(),
            ))?,
        };
        let reply = rt.exec(&kind, &call, &stdin)?;
        let after = Snapshot::take(rt, att.ns())?;
        let made = before.created(&after);
        let verdict = if reply.success {
            if let Some(r) = reply.json.as_ref().filter(|r| r.get("code").is_none()) {
                // The guard DELs it with the well-formed parameters.
                att.result = Some(r.clone());
            }
            let mut m = format!("{kind} exited 0 instead of failing ({reply})");
            if !made.is_empty() {
                m.push_str(&format!("; it created {}", made.join(", ")));
            }
            Verdict::Fail(m)
        } else {
            let got = reply.code();
            let msg_ok = reply.json.as_ref().is_some_and(|j| j["msg"].is_string());
            let mut problems = Vec::new();
            if got != Some(code) {
                problems.push(format!(
                    "wanted error {code}, got {}",
                    got.map_or("no error code".to_owned(), |c| c.to_string())
                ));
            }
            if got.is_some() && !msg_ok {
                problems.push("the error has no msg".to_owned());
            }
            if !made.is_empty() {
                problems.push(format!("it created {}", made.join(", ")));
            }
            if problems.is_empty() {
                Verdict::Pass(format!("{reply}"))
            } else {
                Verdict::Fail(format!("{}; {reply}", problems.join("; ")))
            }
        };
        Ok(verdict)
    });
}

fn bad_inputs(cx: &mut Cx<'_>, v: &str) {
    let vv = (v, v);
    bad_input(cx, "input.no-command", vv, 4, |c| c.command = None, None);
    bad_input(
        cx,
        "input.unknown-command",
        vv,
        4,
        |c| c.command = Some("FROB".into()),
        None,
    );
    bad_input(
        cx,
        "input.no-container-id",
        vv,
        4,
        |c| c.container_id = None,
        None,
    );
    bad_input(
        cx,
        "input.bad-container-id",
        vv,
        4,
        |c| c.container_id = Some("-bad/id".into()),
        None,
    );
    bad_input(cx, "input.no-netns", vv, 4, |c| c.netns = None, None);
    bad_input(cx, "input.no-ifname", vv, 4, |c| c.ifname = None, None);
    bad_input(
        cx,
        "input.bad-ifname",
        vv,
        4,
        |c| c.ifname = Some("bad/if:name0123".into()),
        None,
    );
    bad_input(
        cx,
        "input.unsupported-version",
        (v, "9.9.9"),
        1,
        |_| {},
        None,
    );
    bad_input(
        cx,
        "input.garbage-stdin",
        vv,
        6,
        |_| {},
        Some(b"{\"cniVersion\": garbage"),
    );
}

fn parallel(cx: &mut Cx<'_>, v: &str, n: usize) {
    let rt = cx.rt;
    cx.run("parallel.add-del", None, || {
        let mut atts = (0..n)
            .map(|i| Attachment::new(rt, v, &format!("p{i}")))
            .collect::<Result<Vec<_>>>()?;
        let adds: Vec<Result<Value>> = std::thread::scope(|s| {
            let handles: Vec<_> = atts
                .iter_mut()
                .map(|a| s.spawn(move || a.add().cloned()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("ADD thread panicked")))
                })
                .collect()
        });
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, r) in adds.iter().enumerate() {
            match r {
                Err(e) => problems.push(format!("ADD {i}: {e:#}")),
                Ok(r) => {
                    for ip in r["ips"].as_array().into_iter().flatten() {
                        let a = ip["address"].as_str().unwrap_or_default();
                        let addr = a.split('/').next().unwrap_or_default().to_owned();
                        if !seen.insert(addr.clone()) {
                            problems.push(format!("address {addr} handed out twice"));
                        }
                    }
                }
            }
        }
        let dels: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = atts
                .iter_mut()
                .filter(|a| a.result.is_some())
                .map(|a| s.spawn(move || a.del()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("DEL thread panicked")))
                })
                .collect()
        });
        for (i, d) in dels.iter().enumerate() {
            if let Err(e) = d {
                problems.push(format!("DEL {i}: {e:#}"));
            }
        }
        for a in atts.iter().filter(|a| a.deleted) {
            let left = observe::leftovers_after_del(
                rt,
                a.result.as_ref(),
                a.netns.as_ref(),
                &a.ifname,
                &a.container_id,
            )?;
            problems.extend(left);
        }
        if problems.is_empty() {
            Ok(Verdict::Pass(format!(
                "{n} ADDs at once: {} distinct addresses; {n} DELs at once",
                seen.len()
            )))
        } else {
            Ok(Verdict::Fail(problems.join("; ")))
        }
    });
}

fn v1_1(cx: &mut Cx<'_>) {
    let rt = cx.rt;
    let v = "1.1.0";
    cx.run("status.ready", Some(v), || {
        rt.status(v)?;
        Ok(Verdict::Pass("STATUS succeeded".into()))
    });

    // Two containers; GC names only the first as valid.
    let setup = || -> Result<(Attachment<'_>, Attachment<'_>)> {
        let mut keep = Attachment::new(rt, v, "gk")?;
        keep.add().context("ADD of the valid container")?;
        let mut stale = Attachment::new(rt, v, "gs")?;
        stale.add().context("ADD of the stale container")?;
        Ok((keep, stale))
    };
    let started = Instant::now();
    let (keep, stale) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("{e:#}");
            cx.record(
                "gc.keeps-valid",
                Some(v),
                started,
                Err(anyhow::anyhow!("{msg}")),
            );
            cx.record(
                "gc.releases-stale",
                Some(v),
                started,
                Err(anyhow::anyhow!("{msg}")),
            );
            return;
        }
    };
    let gather = || -> Result<_> {
        let keep_before = observe::state_mentioning(&rt.run_dir, &keep.container_id)?;
        let stale_before = observe::state_mentioning(&rt.run_dir, &stale.container_id)?;
        let gc = rt.gc(v, &[(&keep.container_id, &keep.ifname)]);
        let keep_after = observe::state_mentioning(&rt.run_dir, &keep.container_id)?;
        let stale_after = observe::state_mentioning(&rt.run_dir, &stale.container_id)?;
        Ok((gc, keep_before, keep_after, stale_before, stale_after))
    };
    let (gc, keep_before, keep_after, stale_before, stale_after) = match gather() {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("{e:#}");
            cx.record(
                "gc.keeps-valid",
                Some(v),
                started,
                Err(anyhow::anyhow!("{msg}")),
            );
            cx.record(
                "gc.releases-stale",
                Some(v),
                started,
                Err(anyhow::anyhow!("{msg}")),
            );
            return;
        }
    };
    let gc_err = gc.as_ref().err().map(|e| format!("GC failed: {e:#}"));
    cx.run("gc.keeps-valid", Some(v), || {
        if let Some(e) = &gc_err {
            bail!("{e}");
        }
        if keep_after != keep_before {
            return Ok(Verdict::Fail(format!(
                "the valid container's state changed: {keep_before:?} -> {keep_after:?}"
            )));
        }
        keep.check()
            .context("CHECK of the valid container after GC")?;
        Ok(Verdict::Pass(
            "GC succeeded; the valid container kept its state and passes CHECK".into(),
        ))
    });
    cx.run("gc.releases-stale", Some(v), || {
        if let Some(e) = &gc_err {
            bail!("{e}");
        }
        if stale_before.is_empty() {
            return Ok(Verdict::NotApplicable(
                "no state file under the run directory names the container".into(),
            ));
        }
        if stale_after.is_empty() {
            Ok(Verdict::Pass(format!(
                "GC released {}",
                stale_before
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        } else {
            Ok(Verdict::Fail(format!(
                "still there after GC: {}",
                stale_after
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    });
    drop(stale);
    drop(keep);
}
