//! `peers`: ringkv against mace-kv, redb, fjall, RocksDB and LMDB, and against fio's
//! measure of the device, in one run.
//!
//! ```sh
//! cargo run --release -p ringkv-peers -- [--scale F] [--bulk-keys N] [--seconds 3] \
//!     [--engines a,b] [--workloads mixed,ltm,durable,bulk,fio] [--dir DATA] [--out DIR]
//! ```
//!
//! The parent plans the steps and runs each (engine, task) in a child process of its own
//! (`peers child --spec <json>`, see `child.rs`): memory is per process, a larger-than-memory
//! read phase runs inside a memory cgroup, durable-commit phases under `perf stat`. Results
//! go to `<out>/results.csv`, `results.md` and `throughput.svg`; children's logs to
//! `<out>/logs/`. A value that fails verification aborts the run.

mod child;
mod data;
mod driver;
mod engine;
mod engines;
mod fio;
mod report;
mod spec;
mod sys;
mod workloads;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use child::{Spec, Task};
use engine::EngineKind;
use report::Row;
use spec::{Sizes, COMMITTERS, FIO_DEPTHS, LTM_DEPTHS, MIXES};

#[derive(Parser, Debug)]
#[command(name = "peers", about = "ringkv against its peers and against the device (fio)")]
struct Args {
    /// Multiplies key counts and data sizes (1 = the issue's sizes: 1M keys for W1-W6,
    /// 2 GiB larger-than-memory data with 256 MiB caches under a 512 MiB cap, 10M bulk keys).
    /// Without it: 0.25, except the bulk load at 0.05 (500,000 keys), so that the whole run
    /// fits in 15 minutes on 2 cores.
    #[arg(long)]
    scale: Option<f64>,
    /// Keys of the bulk load, overriding the scale's (10M at `--scale 1`).
    #[arg(long)]
    bulk_keys: Option<u64>,
    /// Engines, comma-separated: ringkv-uring, ringkv-threadpool, mace, redb, fjall, rocksdb, lmdb;
    /// also ringkv-uring-none and ringkv-threadpool-none (`Durability::None` for the relaxed
    /// workloads), which run only when named.
    #[arg(long, value_delimiter = ',')]
    engines: Option<Vec<String>>,
    /// Workloads, comma-separated: mixed (= W1..W6) or W1..W6, ltm, durable, bulk, fio.
    #[arg(long, value_delimiter = ',', default_value = "mixed,ltm,durable,bulk,fio")]
    workloads: Vec<String>,
    /// Data directory (the engines' files and fio's test file); default `<out>/data`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Output directory; default `target/peers/<UTC timestamp>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measured seconds of each timed phase (a warm-up of a quarter of it, at most 1 s,
    /// precedes the W1-W6 and larger-than-memory phases).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Internal: run one engine task (started by the parent).
    #[command(hide = true)]
    Child {
        #[arg(long)]
        spec: String,
    },
}

struct Plan {
    mixes: Vec<String>,
    ltm: bool,
    durable: bool,
    bulk: bool,
    fio: bool,
}

fn plan(tokens: &[String]) -> anyhow::Result<Plan> {
    let mut p = Plan { mixes: Vec::new(), ltm: false, durable: false, bulk: false, fio: false };
    for t in tokens {
        match t.trim().to_ascii_lowercase().as_str() {
            "all" => {
                p.mixes = MIXES.iter().map(|m| m.id.to_string()).collect();
                (p.ltm, p.durable, p.bulk, p.fio) = (true, true, true, true);
            }
            "mixed" => p.mixes = MIXES.iter().map(|m| m.id.to_string()).collect(),
            "ltm" => p.ltm = true,
            "durable" => p.durable = true,
            "bulk" => p.bulk = true,
            "fio" => p.fio = true,
            w => match spec::Mix::find(w) {
                Some(m) if !p.mixes.iter().any(|x| x == m.id) => p.mixes.push(m.id.into()),
                Some(_) => {}
                None => anyhow::bail!("unknown workload {t:?} (mixed, W1..W6, ltm, durable, bulk, fio, all)"),
            },
        }
    }
    Ok(p)
}

/// A fatal error: a value failed verification.
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "verification failed in {}", self.0)
    }
}

struct Runner {
    exe: PathBuf,
    out: PathBuf,
    logs: PathBuf,
    sizes: Sizes,
    seconds: f64,
    rows: Vec<Row>,
    pb: ProgressBar,
    perf: bool,
    cgroups: bool,
    notes: Vec<String>,
}

struct ChildEnd {
    rows: Vec<Row>,
    ok: bool,
    perf_fsyncs: Option<u64>,
    tail: String,
}

impl Runner {
    fn child(
        &mut self,
        engine: EngineKind,
        task: Task,
        dir: PathBuf,
        cgroup: Option<&Path>,
        perf: bool,
    ) -> anyhow::Result<ChildEnd> {
        let label = format!("{}-{}", engine.name(), task_label(&task));
        self.pb.set_message(label.clone());
        let spec = Spec {
            engine,
            task,
            dir,
            sizes: self.sizes.clone(),
            seconds: self.seconds,
            cgroup: cgroup.map(Path::to_path_buf),
        };
        let spec_json = serde_json::to_string(&spec)?;
        let log_path = self.logs.join(format!("{label}.log"));
        let perf_path = self.logs.join(format!("{label}.perf"));
        let mut cmd = if perf {
            let mut c = Command::new("perf");
            c.args(["stat", "-x,", "-e", sys::FSYNC_EVENTS, "-o"]).arg(&perf_path).arg("--").arg(&self.exe);
            c
        } else {
            Command::new(&self.exe)
        };
        cmd.args(["child", "--spec", &spec_json]);
        let t = Instant::now();
        let mut proc = cmd.stdout(Stdio::piped()).stderr(File::create(&log_path)?).spawn()?;
        let mut rows = Vec::new();
        for line in BufReader::new(proc.stdout.take().expect("piped stdout")).lines() {
            let line = line?;
            if let Some(j) = line.strip_prefix("ROW ") {
                let row: Row = serde_json::from_str(j)?;
                say(
                    &self.pb,
                    format!(
                        "  {:<18} {:<8} x{:<4} {:>12} ops/s  p50 {:>9.1} us  p99 {:>9.1} us",
                        row.engine,
                        row.workload,
                        row.threads,
                        report::markdown::num(row.ops_per_s),
                        row.p50_us,
                        row.p99_us
                    ),
                );
                rows.push(row);
            }
        }
        let status = proc.wait()?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: String =
            log.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
        if status.code() == Some(2) || log.contains("VERIFY FAILED") {
            return Err(anyhow::Error::msg(format!("{label}: {tail}")).context(Fatal(label)));
        }
        let perf_fsyncs = if perf {
            std::fs::read_to_string(&perf_path).ok().and_then(|t| sys::parse_perf_counts(&t))
        } else {
            None
        };
        say(
            &self.pb,
            format!(
                "{label}: {:.1} s{}",
                t.elapsed().as_secs_f64(),
                if status.success() { "" } else { " FAILED" }
            ),
        );
        Ok(ChildEnd {
            rows,
            ok: status.success(),
            perf_fsyncs,
            tail: if status.success() { String::new() } else { format!("{status}: {tail}") },
        })
    }

    fn push(&mut self, mut rows: Vec<Row>) -> anyhow::Result<()> {
        self.rows.append(&mut rows);
        std::fs::write(self.out.join("results.csv"), report::csv(&self.rows))?;
        Ok(())
    }

    fn failed(&self, workload: &str, engine: &str, threads: usize, why: &str) -> Row {
        Row {
            workload: workload.into(),
            engine: engine.into(),
            threads: threads as u32,
            ops_per_s: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            extra: format!("FAILED: {why}"),
        }
    }

    fn engine(&mut self, e: EngineKind, p: &Plan, data: &Path) -> anyhow::Result<()> {
        let root = data.join(e.name());
        let _ = std::fs::remove_dir_all(&root);
        if !p.mixes.is_empty() {
            let end =
                self.child(e, Task::Mixed { mixes: p.mixes.clone() }, root.join("mixed"), None, false)?;
            let mut rows = end.rows;
            if !end.ok {
                rows.push(self.failed("W1", e.name(), 1, &end.tail));
            }
            self.push(rows)?;
            let _ = std::fs::remove_dir_all(root.join("mixed"));
            self.pb.inc(1);
        }
        if p.ltm {
            let dir = root.join("ltm");
            let end = self.child(e, Task::LtmLoad, dir.clone(), None, false)?;
            let loaded = end.ok;
            let mut rows = end.rows;
            if !loaded {
                rows.push(self.failed("ltm-load", e.name(), 1, &end.tail));
            }
            self.push(rows)?;
            self.pb.inc(1);
            for d in LTM_DEPTHS {
                if !loaded {
                    self.pb.inc(1);
                    continue;
                }
                let dropped = sys::drop_page_cache();
                let cg = if self.cgroups {
                    Some(sys::Cgroup::create(&format!("{}-{d}", e.name()), self.sizes.ltm_cap)?)
                } else {
                    None
                };
                let end = self.child(
                    e,
                    Task::LtmRead { depth: d },
                    dir.clone(),
                    cg.as_ref().map(|c| c.path()),
                    false,
                )?;
                let mem = cgroup_note(cg.as_ref(), self.sizes.ltm_cap);
                let drop_note = if dropped { "page cache dropped" } else { "page cache NOT dropped" };
                let mut rows = end.rows;
                for r in &mut rows {
                    r.extra = format!("{}; {mem}; {drop_note}", r.extra);
                }
                if !end.ok {
                    let oom = cg.as_ref().is_some_and(|c| c.oom_kills() > 0);
                    let why = if oom {
                        format!("killed by the OOM killer under the cap ({mem})")
                    } else {
                        format!("{}; {mem}", end.tail)
                    };
                    rows.push(self.failed("ltm-read", e.name(), d, &why));
                }
                drop(cg);
                self.push(rows)?;
                self.pb.inc(1);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        if p.durable {
            for c in COMMITTERS {
                let dir = root.join(format!("durable-{c}"));
                let perf = self.perf;
                let end = self.child(e, Task::Durable { committers: c }, dir.clone(), None, perf)?;
                let mut rows = end.rows;
                for r in &mut rows {
                    let sys_count = end.perf_fsyncs.map_or("n/a".to_string(), |n| n.to_string());
                    if e.is_ringkv() {
                        // The engine's own count is in `extra` already; add the syscall count.
                        r.extra = r.extra.replacen("fsyncs ", "fsyncs=", 1);
                        r.extra = format!(
                            "{}; fsync+fdatasync syscalls (perf, whole process) {sys_count}",
                            r.extra
                        );
                    } else {
                        let f = match end.perf_fsyncs {
                            Some(n) => format!("fsyncs={n} (perf: fsync+fdatasync syscalls, whole process)"),
                            None => "fsyncs=n/a (perf cannot count syscalls here)".into(),
                        };
                        r.extra = r.extra.replace("fsyncs: see perf count", &f);
                    }
                }
                if !end.ok {
                    rows.push(self.failed("durable", e.name(), c, &end.tail));
                }
                self.push(rows)?;
                let _ = std::fs::remove_dir_all(&dir);
                self.pb.inc(1);
            }
        }
        if p.bulk {
            let dir = root.join("bulk");
            // The bulk load runs under the same memory cap as the larger-than-memory reads
            // (page cache included), and its peak is reported beside keys/s and bytes
            // written: a load that outgrows the cap is killed, as it would be in a
            // container.
            let cg = if self.cgroups {
                Some(sys::Cgroup::create(&format!("{}-bulk", e.name()), self.sizes.ltm_cap)?)
            } else {
                None
            };
            let end = self.child(e, Task::Bulk, dir.clone(), cg.as_ref().map(|c| c.path()), false)?;
            let mem = cgroup_note(cg.as_ref(), self.sizes.ltm_cap);
            let mut rows = end.rows;
            for r in &mut rows {
                r.extra = format!("{}; {mem}", r.extra);
            }
            if !end.ok {
                let oom = cg.as_ref().is_some_and(|c| c.oom_kills() > 0);
                let why = if oom {
                    format!("killed by the OOM killer under the cap ({mem})")
                } else {
                    format!("{}; {mem}", end.tail)
                };
                rows.push(self.failed("bulk", e.name(), 1, &why));
            }
            drop(cg);
            self.push(rows)?;
            let _ = std::fs::remove_dir_all(&dir);
            self.pb.inc(1);
        }
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    }

    fn fio(&mut self, data: &Path) -> anyhow::Result<()> {
        if !sys::have("fio") {
            say(&self.pb, fio::INSTALL_HINT);
            self.notes.push(format!("fio: not run ({})", fio::INSTALL_HINT));
            self.pb.inc((FIO_DEPTHS.len() + 2) as u64);
            return Ok(());
        }
        std::fs::create_dir_all(data)?;
        let file = data.join("fio.dat");
        let size = self.sizes.ltm_bytes().max(256 << 20);
        let mut rows = Vec::new();
        for d in FIO_DEPTHS {
            self.pb.set_message(format!("fio randread depth {d}"));
            rows.push(fio::randread(&file, size, d, self.seconds)?);
            self.pb.inc(1);
        }
        self.pb.set_message("fio seqwrite");
        rows.push(fio::seqwrite(&file, size, self.seconds)?);
        self.pb.inc(1);
        let _ = std::fs::remove_file(&file);
        self.pb.set_message("fio fsync");
        rows.push(fio::fsync(&data.join("fio-fsync.dat"), self.seconds)?);
        let _ = std::fs::remove_file(data.join("fio-fsync.dat"));
        self.pb.inc(1);
        for r in &rows {
            say(
                &self.pb,
                format!(
                    "  fio {:<13} x{:<4} {:>12}  p50 {:>9.1} us  p99 {:>9.1} us",
                    r.workload,
                    r.threads,
                    report::markdown::num(r.ops_per_s),
                    r.p50_us,
                    r.p99_us
                ),
            );
        }
        self.push(rows)
    }
}

/// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
fn say(pb: &ProgressBar, line: impl Into<String>) {
    let line = line.into();
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

fn task_label(t: &Task) -> String {
    match t {
        Task::Mixed { .. } => "mixed".into(),
        Task::LtmLoad => "ltm-load".into(),
        Task::LtmRead { depth } => format!("ltm-read-{depth}"),
        Task::Durable { committers } => format!("durable-{committers}"),
        Task::Bulk => "bulk".into(),
    }
}

fn mem_total_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / (1024.0 * 1024.0))
}

fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Child { spec }) = &args.cmd {
        return child::main(spec);
    }
    match parent(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parent(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let engines: Vec<EngineKind> = match &args.engines {
        None => EngineKind::DEFAULT.to_vec(),
        Some(list) => list
            .iter()
            .map(|s| EngineKind::parse(s).ok_or_else(|| anyhow::anyhow!("unknown engine {s:?}")))
            .collect::<anyhow::Result<_>>()?,
    };
    let p = plan(&args.workloads)?;
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("target/peers").join(sys::timestamp()));
    std::fs::create_dir_all(out.join("logs"))?;
    let data = args.dir.clone().unwrap_or_else(|| out.join("data"));
    std::fs::create_dir_all(&data)?;
    let mut sizes = args.scale.map_or_else(Sizes::default_profile, Sizes::at);
    if let Some(n) = args.bulk_keys {
        anyhow::ensure!(n > 0, "--bulk-keys must be positive");
        sizes.bulk_keys = n;
    }

    let mut notes = Vec::new();
    let cgroups = sys::cgroup_available();
    if p.ltm && !cgroups {
        notes.push(format!(
            "no memory cgroup could be made under {}: larger-than-memory reads ran UNCAPPED",
            sys::CGROUP_MEMORY_ROOT
        ));
    }
    let perf = sys::perf_counts_fsyncs();
    if p.durable && !perf {
        notes.push("perf cannot count fsync syscalls here: peers' fsyncs are n/a".into());
    }
    let per_engine = u64::from(!p.mixes.is_empty())
        + if p.ltm { 1 + LTM_DEPTHS.len() as u64 } else { 0 }
        + if p.durable { COMMITTERS.len() as u64 } else { 0 }
        + u64::from(p.bulk);
    let total = per_engine * engines.len() as u64 + if p.fio { FIO_DEPTHS.len() as u64 + 2 } else { 0 };
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    say(&pb, format!(
        "peers: scale {}{} ({} keys W1-W6; {} MiB larger-than-memory, cache {} MiB, cap {} MiB; {} bulk keys), {} s phases -> {}",
        sizes.scale,
        if args.scale.is_none() { " (default profile)" } else { "" },
        sizes.mixed_keys,
        sizes.ltm_bytes() >> 20,
        sizes.ltm_cache >> 20,
        sizes.ltm_cap >> 20,
        sizes.bulk_keys,
        args.seconds,
        out.display()
    ));
    let mut r = Runner {
        exe: std::env::current_exe()?,
        out: out.clone(),
        logs: out.join("logs"),
        sizes: sizes.clone(),
        seconds: args.seconds,
        rows: Vec::new(),
        pb,
        perf,
        cgroups,
        notes,
    };
    let mut result = Ok(());
    for &e in &engines {
        if let Err(err) = r.engine(e, &p, &data) {
            result = Err(err);
            break;
        }
    }
    if result.is_ok() && p.fio {
        result = r.fio(&data);
    }
    r.pb.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();

    let mut lines = vec![
        format!("date (UTC): {}; wall time {:.0} s", sys::timestamp(), wall),
        format!(
            "machine: {} cores, {:.1} GiB memory, Linux {}; data on {} ({})",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_gib(),
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            data.display(),
            fs_type(&data)
        ),
        format!(
            "scale {}{}: W1-W6 {} keys (16 B keys, 128 B values, {} MiB cache, relaxed); larger-than-memory {} x 4 KiB = {} MiB, cache {} MiB, cgroup cap {} MiB; durable commits over {} ids; bulk {} keys; {} s measured per phase",
            sizes.scale,
            if args.scale.is_none() { " (default profile: bulk at 0.05)" } else { "" },
            sizes.mixed_keys,
            sizes.mixed_cache >> 20,
            sizes.ltm_keys,
            sizes.ltm_bytes() >> 20,
            sizes.ltm_cache >> 20,
            sizes.ltm_cap >> 20,
            sizes.durable_keys,
            sizes.bulk_keys,
            args.seconds
        ),
        format!("engines: {}", engines.iter().map(|e| e.version()).collect::<Vec<_>>().join(", ")),
    ];
    lines.extend(r.notes.iter().cloned());
    let info = report::markdown::RunInfo { lines };
    std::fs::write(out.join("results.csv"), report::csv(&r.rows))?;
    std::fs::write(out.join("results.md"), report::markdown::render(&r.rows, &info))?;
    if !r.rows.is_empty() {
        if let Err(e) = report::plot::draw(&r.rows, &out.join("throughput.svg")) {
            eprintln!("peers: plot failed: {e:#}");
        }
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    eprintln!("peers: {:.0} s; results in {}", wall, out.display());
    result.map_err(|e| {
        if e.downcast_ref::<Fatal>().is_some() {
            e.context("a value failed verification: run aborted")
        } else {
            e
        }
    })
}

/// What a phase run in memory cgroup `cg` (capped at `cap` bytes) used: the cap, the peak
/// (page cache included), how often the limit was hit (reclaims) and the OOM kills.
fn cgroup_note(cg: Option<&sys::Cgroup>, cap: u64) -> String {
    match cg {
        Some(c) => format!(
            "cgroup cap {} MiB, peak {} MiB (page cache included), limit hit {} times, OOM kills {}",
            cap >> 20,
            c.peak_bytes() >> 20,
            c.failcnt(),
            c.oom_kills()
        ),
        None => "NOT capped (no memory cgroup)".into(),
    }
}
