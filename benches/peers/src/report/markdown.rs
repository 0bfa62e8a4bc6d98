//! `results.md`: pivot tables per workload, each figure with its ratio to the best engine
//! of that column (1.00 = the best), the larger-than-memory reads also as a ratio of fio at
//! the same depth, and a summary of ringkv against the best peer.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::Row;
use crate::spec::{COMMITTERS, LTM_DEPTHS, MIXED_THREADS, MIXES};

/// What the header of the report says about the run.
pub struct RunInfo {
    /// The run's heading lines (date, machine, versions, sizes, notes).
    pub lines: Vec<String>,
}

fn find<'a>(rows: &'a [Row], w: &str, e: &str, t: usize) -> Option<&'a Row> {
    rows.iter().find(|r| r.workload == w && r.engine == e && r.threads as usize == t && r.ops_per_s > 0.0)
}

fn best<'a>(rows: &'a [Row], w: &str, t: usize, peers_only: bool) -> Option<&'a Row> {
    rows.iter()
        .filter(|r| r.workload == w && r.threads as usize == t && r.engine != "fio" && r.ops_per_s > 0.0)
        .filter(|r| !peers_only || !r.engine.starts_with("ringkv"))
        .max_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s))
}

/// `12,345` style.
pub fn num(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn engines(rows: &[Row]) -> Vec<String> {
    let order = crate::engine::EngineKind::ALL.map(|e| e.name());
    let set: BTreeSet<&str> = rows.iter().map(|r| r.engine.as_str()).filter(|e| *e != "fio").collect();
    order.iter().filter(|e| set.contains(**e)).map(|e| e.to_string()).collect()
}

/// The fsync count written into a durable row's `extra` (`fsyncs=N`).
pub fn fsyncs_of(r: &Row) -> Option<u64> {
    let at = r.extra.find("fsyncs=")? + "fsyncs=".len();
    r.extra[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn cell(rows: &[Row], w: &str, e: &str, t: usize) -> String {
    match (find(rows, w, e, t), best(rows, w, t, false)) {
        (Some(r), Some(b)) => format!("{} ({:.2})", num(r.ops_per_s), r.ops_per_s / b.ops_per_s),
        _ => failed(rows, w, e, t),
    }
}

fn failed(rows: &[Row], w: &str, e: &str, t: usize) -> String {
    match rows.iter().find(|r| r.workload == w && r.engine == e && r.threads as usize == t) {
        Some(r) if r.extra.starts_with("FAILED") => "failed".into(),
        _ => "-".into(),
    }
}

/// The markdown report.
pub fn render(rows: &[Row], info: &RunInfo) -> String {
    let mut s = String::new();
    let es = engines(rows);
    let _ = writeln!(s, "# ringkv peer benchmark\n");
    for l in &info.lines {
        let _ = writeln!(s, "- {l}");
    }
    let _ = writeln!(
        s,
        "\nEach figure is followed by its ratio to the best engine of its column (1.00 = best).\n"
    );

    // W1-W6.
    for t in MIXED_THREADS {
        if !rows.iter().any(|r| r.workload.starts_with('W') && r.threads as usize == t) {
            continue;
        }
        let _ = writeln!(s, "## W1-W6, {t} thread(s) / task(s): ops/s\n");
        let _ = writeln!(s, "| engine | {} |", MIXES.map(|m| m.id).join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(MIXES.len()));
        for e in &es {
            let cells: Vec<String> = MIXES.iter().map(|m| cell(rows, m.id, e, t)).collect();
            let _ = writeln!(s, "| {e} | {} |", cells.join(" | "));
        }
        let _ = writeln!(s);
    }

    // Larger than memory.
    if rows.iter().any(|r| r.workload == "ltm-read" || r.workload == "fio-randread") {
        let _ = writeln!(
            s,
            "## Larger than memory: random 4 KiB gets/s (x best engine, x fio at the same depth), p50 / p99 us\n"
        );
        let _ = writeln!(s, "| engine | {} |", LTM_DEPTHS.map(|d| format!("depth {d}")).join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(LTM_DEPTHS.len()));
        for e in &es {
            let cells: Vec<String> = LTM_DEPTHS
                .iter()
                .map(|&d| match (find(rows, "ltm-read", e, d), best(rows, "ltm-read", d, false)) {
                    (Some(r), Some(b)) => {
                        let fio = find(rows, "fio-randread", "fio", d)
                            .map_or("-".to_string(), |f| format!("{:.2}", r.ops_per_s / f.ops_per_s));
                        format!(
                            "{} ({:.2}, fio {fio}) {:.0} / {:.0}",
                            num(r.ops_per_s),
                            r.ops_per_s / b.ops_per_s,
                            r.p50_us,
                            r.p99_us
                        )
                    }
                    _ => failed(rows, "ltm-read", e, d),
                })
                .collect();
            let _ = writeln!(s, "| {e} | {} |", cells.join(" | "));
        }
        let fio: Vec<String> = LTM_DEPTHS
            .iter()
            .map(|&d| {
                find(rows, "fio-randread", "fio", d)
                    .map_or("-".into(), |f| format!("{} {:.0} / {:.0}", num(f.ops_per_s), f.p50_us, f.p99_us))
            })
            .collect();
        let _ = writeln!(s, "| fio (device) | {} |", fio.join(" | "));
        let loads: Vec<String> = es
            .iter()
            .filter_map(|e| find(rows, "ltm-load", e, 1).map(|r| format!("{e}: {}", r.extra)))
            .collect();
        if !loads.is_empty() {
            let _ = writeln!(s, "\nLoads: {}.", loads.join("; "));
        }
        let _ = writeln!(s);
    }

    // Durable commits.
    if rows.iter().any(|r| r.workload == "durable") {
        let _ = writeln!(s, "## Durable commits (fsync per commit): commits/s (x best), fsyncs per commit\n");
        let _ = writeln!(s, "| engine | {} |", COMMITTERS.map(|c| format!("{c} committer(s)")).join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(COMMITTERS.len()));
        for e in &es {
            let cells: Vec<String> = COMMITTERS
                .iter()
                .map(|&c| match (find(rows, "durable", e, c), best(rows, "durable", c, false)) {
                    (Some(r), Some(b)) => {
                        let commits = commits_of(r) as f64;
                        let f = fsyncs_of(r)
                            .map_or("n/a".to_string(), |f| format!("{:.2}", f as f64 / commits.max(1.0)));
                        format!("{} ({:.2}); {f} fsync/commit", num(r.ops_per_s), r.ops_per_s / b.ops_per_s)
                    }
                    _ => failed(rows, "durable", e, c),
                })
                .collect();
            let _ = writeln!(s, "| {e} | {} |", cells.join(" | "));
        }
        let _ = writeln!(
            s,
            "\nfsyncs: ringkv's own count of WAL fsyncs in the measured phase (`stats().wal_fsyncs`; io_uring fsyncs are no system calls); other engines: `fsync` + `fdatasync` system calls of the whole process (open, phase, close, reopen) counted by `perf stat`, so slightly more than the phase's.\n"
        );
    }

    // Bulk load.
    if rows.iter().any(|r| r.workload == "bulk") {
        let _ = writeln!(s, "## Bulk load (random key order)\n");
        let _ = writeln!(s, "| engine | keys/s (x best) | details |");
        let _ = writeln!(s, "|---|---|---|");
        for e in &es {
            if let Some(r) = rows.iter().find(|r| r.workload == "bulk" && &r.engine == e) {
                let ratio = best(rows, "bulk", 1, false).map_or(0.0, |b| r.ops_per_s / b.ops_per_s);
                let _ = writeln!(s, "| {e} | {} ({ratio:.2}) | {} |", num(r.ops_per_s), r.extra);
            }
        }
        let _ = writeln!(s);
    }

    // ringkv against the best peer.
    let mut summary = Vec::new();
    let mut cols: Vec<(String, usize, String)> = Vec::new();
    for t in MIXED_THREADS {
        for m in MIXES {
            cols.push((m.id.to_string(), t, format!("{} x{t}", m.id)));
        }
    }
    for d in LTM_DEPTHS {
        cols.push(("ltm-read".into(), d, format!("LTM depth {d}")));
    }
    for c in COMMITTERS {
        cols.push(("durable".into(), c, format!("durable x{c}")));
    }
    cols.push(("bulk".into(), 1, "bulk load".into()));
    for (w, t, label) in cols {
        let Some(bp) = best(rows, &w, t, true) else { continue };
        let mut cells = Vec::new();
        for e in ["ringkv-uring", "ringkv-threadpool"] {
            let ratio = |e: &str| find(rows, &w, e, t).map(|r| format!("{:.2}", r.ops_per_s / bp.ops_per_s));
            // A `-none` run of the same backend (Durability::None), when there is one.
            cells.push(match (ratio(e), ratio(&format!("{e}-none"))) {
                (Some(a), Some(b)) => format!("{a} (None: {b})"),
                (Some(a), None) => a,
                (None, Some(b)) => format!("- (None: {b})"),
                (None, None) => "-".into(),
            });
        }
        let fio = if w == "ltm-read" {
            find(rows, "fio-randread", "fio", t)
                .zip(find(rows, &w, "ringkv-uring", t))
                .map_or("-".into(), |(f, r)| format!("{:.2}", r.ops_per_s / f.ops_per_s))
        } else {
            String::new()
        };
        summary.push(format!("| {label} | {} | {} | {} | {fio} |", bp.engine, cells[0], cells[1]));
    }
    if !summary.is_empty() {
        let _ = writeln!(s, "## ringkv / best peer\n");
        let _ = writeln!(s, "| workload | best peer | ringkv-uring / best peer | ringkv-threadpool / best peer | ringkv-uring / fio |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for l in summary {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s);
    }

    // fio.
    let fio: Vec<&Row> = rows.iter().filter(|r| r.engine == "fio").collect();
    if !fio.is_empty() {
        let _ = writeln!(s, "## fio (the device)\n");
        let _ = writeln!(s, "| job | depth | ops/s (MiB/s for seqwrite) | p50 us | p99 us | |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in fio {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {} |",
                r.workload,
                r.threads,
                num(r.ops_per_s),
                r.p50_us,
                r.p99_us,
                r.extra
            );
        }
        let _ = writeln!(s);
    }

    let fails: Vec<&Row> = rows.iter().filter(|r| r.extra.starts_with("FAILED")).collect();
    if !fails.is_empty() {
        let _ = writeln!(s, "## Failures\n");
        for r in fails {
            let _ = writeln!(s, "- {} {} x{}: {}", r.engine, r.workload, r.threads, r.extra);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Plot: [throughput.svg](throughput.svg). Raw figures: [results.csv](results.csv).");
    s
}

/// The commits counted in a durable row's `extra` (`N commits`).
fn commits_of(r: &Row) -> u64 {
    r.extra.split(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0)
}
