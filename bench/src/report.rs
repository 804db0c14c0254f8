//! The markdown report and the SVG charts.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::{
    services::{SYSTEMS, Sample},
    stats::{human, summarize},
};

/// (system, N, op) -> seconds samples.
type Grouped = BTreeMap<(&'static str, usize, &'static str), Vec<f64>>;

fn group(samples: &[Sample]) -> Grouped {
    let mut g: Grouped = BTreeMap::new();
    for s in samples {
        g.entry((s.system, s.services, s.op))
            .or_default()
            .push(s.seconds);
    }
    g
}

fn sizes(samples: &[Sample]) -> Vec<usize> {
    let mut v: Vec<usize> = samples.iter().map(|s| s.services).collect();
    v.sort();
    v.dedup();
    v
}

/// The services section of the report.
pub fn services_markdown(samples: &[Sample]) -> String {
    let g = group(samples);
    let mut md = String::new();
    for (op, title) in [
        ("full", "Programming N services x 8 backends from empty"),
        (
            "one",
            "Updating one service (its 8 backends replaced) at N services",
        ),
    ] {
        let _ = writeln!(md, "### {title}\n");
        let _ = writeln!(
            md,
            "| N | weir median | iptables-legacy | iptables-nft | nftables | legacy / weir | ipt-nft / weir | nft / weir |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for n in sizes(samples) {
            let med = |sys: &'static str| {
                g.get(&(sys, n, op))
                    .map(|v| summarize(v))
                    .map(|s| (s.median, s.min, s.max, s.p99))
            };
            let weir = med("weir");
            let cell = |sys: &'static str| match med(sys) {
                Some((m, lo, hi, p99)) if op == "one" => format!(
                    "{} (p99 {}, {}–{})",
                    human(m),
                    human(p99),
                    human(lo),
                    human(hi)
                ),
                Some((m, lo, hi, _)) => format!("{} ({}–{})", human(m), human(lo), human(hi)),
                None => "n/a".into(),
            };
            let ratio = |sys: &'static str| match (med(sys), weir) {
                (Some((m, ..)), Some((w, ..))) if w > 0.0 => format!("{:.0}x", m / w),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} | {} | {} |",
                cell("weir"),
                cell("iptables-legacy"),
                cell("iptables-nft"),
                cell("nftables"),
                ratio("iptables-legacy"),
                ratio("iptables-nft"),
                ratio("nftables")
            );
        }
        md.push('\n');
    }
    md
}

/// A log-scale line chart of median seconds against N, one line per system.
pub fn services_chart(
    samples: &[Sample],
    op: &'static str,
    title: &str,
    path: &Path,
) -> Result<()> {
    let g = group(samples);
    let ns = sizes(samples);
    let mut series: Vec<(&'static str, Vec<(f64, f64)>)> = Vec::new();
    for sys in SYSTEMS {
        let pts: Vec<(f64, f64)> = ns
            .iter()
            .filter_map(|&n| {
                g.get(&(sys, n, op))
                    .map(|v| (n as f64, summarize(v).median.max(1e-7)))
            })
            .collect();
        if !pts.is_empty() {
            series.push((sys, pts));
        }
    }
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if all.is_empty() {
        return Err(anyhow!("no samples for {op}"));
    }
    let max_n = ns.last().copied().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_n * 1.05, (lo / 2.0..hi * 2.0).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("services (x 8 backends)")
        .y_desc("seconds (median, log scale)")
        .y_label_formatter(&|v| human(*v))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let colors = [RED, BLUE, GREEN, MAGENTA];
    for (k, (sys, pts)) in series.into_iter().enumerate() {
        let color = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(sys)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// The CNI section of the report.
pub fn cni_markdown(samples: &[crate::cni::Sample]) -> String {
    let mut g: BTreeMap<(&'static str, usize, &'static str), (Vec<f64>, u64)> = BTreeMap::new();
    for s in samples {
        let e = g.entry((s.op, s.concurrency, s.plugin)).or_default();
        e.0.push(s.seconds);
        e.1 = e.1.max(s.max_rss_kib);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| op | concurrency | weir median | weir p99 | bridge median | bridge p99 | bridge / weir (median) | weir peak RSS | bridge peak RSS |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut keys: Vec<(&'static str, usize)> = g.keys().map(|(o, c, _)| (*o, *c)).collect();
    keys.dedup();
    for (op, conc) in keys {
        let get = |p: &'static str| g.get(&(op, conc, p)).map(|(v, rss)| (summarize(v), *rss));
        let (Some((w, wrss)), Some((b, brss))) = (get("weir"), get("bridge")) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {op} | {conc} | {} | {} | {} | {} | {:.1}x | {:.1} MiB | {:.1} MiB |",
            human(w.median),
            human(w.p99),
            human(b.median),
            human(b.p99),
            b.median / w.median,
            wrss as f64 / 1024.0,
            brss as f64 / 1024.0
        );
    }
    md.push('\n');
    md
}

/// The pod-to-pod section of the report.
pub fn pods_markdown(samples: &[crate::pods::Sample]) -> String {
    let mut g: BTreeMap<(&'static str, &'static str, &'static str), Vec<f64>> = BTreeMap::new();
    for s in samples {
        g.entry((s.path, s.system, s.metric))
            .or_default()
            .push(s.value);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| path | system | TCP throughput (median, min–max) | RR latency median | RR p99 |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    for path in ["same node", "across nodes"] {
        for system in ["weir", "bridge", "bare veth", "bare underlay"] {
            let (Some(tp), Some(rr)) = (
                g.get(&(path, system, "throughput")),
                g.get(&(path, system, "rr")),
            ) else {
                continue;
            };
            let t = summarize(tp);
            let r = summarize(rr);
            let _ = writeln!(
                md,
                "| {path} | {system} | {:.1} Gbit/s ({:.1}–{:.1}) | {} | {} |",
                t.median / 1e9,
                t.min / 1e9,
                t.max / 1e9,
                human(r.median),
                human(r.p99)
            );
        }
    }
    let ratio = |path: &'static str, a: &'static str, b: &'static str, metric: &'static str| match (
        g.get(&(path, a, metric)),
        g.get(&(path, b, metric)),
    ) {
        (Some(x), Some(y)) => Some(summarize(x).median / summarize(y).median),
        _ => None,
    };
    if let (Some(tp), Some(lat)) = (
        ratio("same node", "weir", "bridge", "throughput"),
        ratio("same node", "weir", "bridge", "rr"),
    ) {
        let _ = writeln!(
            md,
            "\nSame node, weir / bridge: throughput {tp:.2}x, RR latency {lat:.2}x (below 1 is faster)."
        );
    }
    md.push('\n');
    md
}

/// The connection latency section of the report, and its chart.
pub fn latency_markdown(samples: &[crate::latency::Sample]) -> String {
    let mut g: BTreeMap<(usize, &'static str), Vec<f64>> = BTreeMap::new();
    for s in samples {
        g.entry((s.services, s.system)).or_default().push(s.seconds);
    }
    let mut ns: Vec<usize> = samples.iter().map(|s| s.services).collect();
    ns.sort();
    ns.dedup();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| N services | weir median | weir p99 | iptables median | iptables p99 | iptables / weir (median) |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|");
    for &n in &ns {
        let (Some(w), Some(i)) = (g.get(&(n, "weir")), g.get(&(n, "iptables"))) else {
            continue;
        };
        let (w, i) = (summarize(w), summarize(i));
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} | {:.2}x |",
            human(w.median),
            human(w.p99),
            human(i.median),
            human(i.p99),
            i.median / w.median
        );
    }
    if let (Some(first), Some(last)) = (ns.first(), ns.last())
        && let (Some(a), Some(b)) = (g.get(&(*first, "weir")), g.get(&(*last, "weir")))
    {
        let _ = writeln!(
            md,
            "\nweir at N={last} against N={first}: {:+.1}% (median).",
            (summarize(b).median / summarize(a).median - 1.0) * 100.0
        );
    }
    md.push('\n');
    md
}

/// Median connection latency against N, one line per system.
pub fn latency_chart(samples: &[crate::latency::Sample], path: &Path) -> Result<()> {
    let as_services: Vec<Sample> = samples
        .iter()
        .map(|s| Sample {
            system: if s.system == "weir" {
                "weir"
            } else {
                "iptables-nft"
            },
            services: s.services,
            op: "latency",
            seconds: s.seconds,
        })
        .collect();
    services_chart(
        &as_services,
        "latency",
        "Connection latency to the last of N services",
        path,
    )
}
