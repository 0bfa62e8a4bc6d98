//! The device's limit, measured by fio (Debian's `fio` package) on the filesystem of the
//! data directory, parsed from `--output-format=json`:
//! - 4 KiB random reads, io_uring, O_DIRECT, at each depth of `FIO_DEPTHS` (the issue's
//!   1/32/128 plus 16/64/256, the depths of the larger-than-memory reads);
//! - sequential write bandwidth: 1 MiB writes, io_uring, O_DIRECT, depth 8;
//! - fsync latency: 4 KiB buffered writes each followed by fsync (`--fsync=1`), one job.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::report::Row;

/// How to install fio when it is missing.
pub const INSTALL_HINT: &str = "fio not found: install it with `apt-get install -y fio` (Debian)";

fn run(args: &[String]) -> anyhow::Result<Value> {
    let out = Command::new("fio").args(args).arg("--output-format=json").output()?;
    anyhow::ensure!(out.status.success(), "fio {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    // fio may print notes before the JSON document.
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find('{').ok_or_else(|| anyhow::anyhow!("no JSON in fio output"))?;
    Ok(serde_json::from_str(&text[start..])?)
}

fn pct_us(v: &Value, p: &str) -> f64 {
    v.get("percentile").and_then(|x| x.get(p)).and_then(Value::as_f64).unwrap_or(0.0) / 1000.0
}

fn job(doc: &Value) -> anyhow::Result<&Value> {
    doc.get("jobs").and_then(|j| j.get(0)).ok_or_else(|| anyhow::anyhow!("fio JSON without jobs"))
}

fn row(workload: &str, depth: usize, ops: f64, p50: f64, p99: f64, extra: String) -> Row {
    Row {
        workload: workload.into(),
        engine: "fio".into(),
        threads: depth as u32,
        ops_per_s: ops,
        p50_us: p50,
        p99_us: p99,
        extra,
    }
}

/// One random-read job at `depth` over `file` of `size` bytes.
pub fn randread(file: &Path, size: u64, depth: usize, seconds: f64) -> anyhow::Result<Row> {
    let doc = run(&[
        "--name=randread".into(),
        format!("--filename={}", file.display()),
        format!("--size={size}"),
        "--rw=randread".into(),
        "--bs=4k".into(),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        format!("--iodepth={depth}"),
        format!("--runtime={}ms", (seconds * 1000.0) as u64),
        "--time_based".into(),
        "--norandommap".into(),
    ])?;
    let r = &job(&doc)?["read"];
    let clat = &r["clat_ns"];
    Ok(row(
        "fio-randread",
        depth,
        r["iops"].as_f64().unwrap_or(0.0),
        pct_us(clat, "50.000000"),
        pct_us(clat, "99.000000"),
        "4 KiB, io_uring, O_DIRECT; latency = completion latency".into(),
    ))
}

/// Sequential write bandwidth; the row's `ops_per_s` is MiB/s.
pub fn seqwrite(file: &Path, size: u64, seconds: f64) -> anyhow::Result<Row> {
    let doc = run(&[
        "--name=seqwrite".into(),
        format!("--filename={}", file.display()),
        format!("--size={size}"),
        "--rw=write".into(),
        "--bs=1M".into(),
        "--ioengine=io_uring".into(),
        "--direct=1".into(),
        "--iodepth=8".into(),
        format!("--runtime={}ms", (seconds * 1000.0) as u64),
        "--time_based".into(),
    ])?;
    let w = &job(&doc)?["write"];
    let mib_s = w["bw_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64;
    let clat = &w["clat_ns"];
    Ok(row(
        "fio-seqwrite",
        8,
        mib_s,
        pct_us(clat, "50.000000"),
        pct_us(clat, "99.000000"),
        "ops_per_s is MiB/s; 1 MiB writes, io_uring, O_DIRECT, depth 8".into(),
    ))
}

/// fsync latency of 4 KiB writes each followed by fsync; `ops_per_s` is fsyncs/s.
pub fn fsync(file: &Path, seconds: f64) -> anyhow::Result<Row> {
    let doc = run(&[
        "--name=fsync".into(),
        format!("--filename={}", file.display()),
        "--size=64M".into(),
        "--rw=write".into(),
        "--bs=4k".into(),
        "--ioengine=sync".into(),
        "--fsync=1".into(),
        format!("--runtime={}ms", (seconds * 1000.0) as u64),
        "--time_based".into(),
    ])?;
    let j = job(&doc)?;
    let iops = j["write"]["iops"].as_f64().unwrap_or(0.0);
    let sync_lat = &j["sync"]["lat_ns"];
    Ok(row(
        "fio-fsync",
        1,
        iops,
        pct_us(sync_lat, "50.000000"),
        pct_us(sync_lat, "99.000000"),
        "4 KiB write + fsync per op; latency = the fsync call alone".into(),
    ))
}
