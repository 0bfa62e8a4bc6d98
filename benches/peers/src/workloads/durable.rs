//! Durable commits: `committers` clients, each commit one 128-byte put of a key drawn
//! uniformly from `durable_keys` ids, fsync'ed before it returns (each engine's durable
//! mode). A conflict is retried. No warm-up: the phase starts on a fresh database. After
//! the phase the engine is closed, reopened, and every key written is read back and checked
//! (its value is one of the versions issued for it).
//!
//! fsyncs: ringkv counts its own (`stats().wal_fsyncs`, the only count that sees fsyncs
//! issued through io_uring); for the other engines the parent counts `fsync` and
//! `fdatasync` system calls of the whole child process with `perf stat` (open and close
//! included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Ctx;
use crate::data::{self, Versions};
use crate::driver::{self, ClientOut, Window};
use crate::engine::{Engine, OpenCfg, Purpose};
use crate::report::Row;
use crate::spec::VALUE_LEN;

/// One phase with `committers` concurrent committers.
pub fn run(ctx: &Ctx, committers: usize, emit: &mut dyn FnMut(Row)) -> anyhow::Result<()> {
    let n = ctx.sizes.durable_keys;
    let cfg = OpenCfg {
        cache_bytes: ctx.sizes.durable_cache as usize,
        durable: true,
        purpose: Purpose::DurableCommits,
        value_len: VALUE_LEN,
        expected_keys: n,
    };
    let e = ctx.open(&cfg)?;
    let versions = Arc::new(Versions::new(n));
    let fsyncs0 = e.fsyncs();
    let w = Window::new(Duration::ZERO, ctx.measure());
    let outs = driver::run_clients(&ctx.rt, &e, committers, |i| {
        client(e.clone(), versions.clone(), n, w, 0xD0D0 ^ ((committers as u64) << 16) ^ i as u64)
    })?;
    let p = driver::merge(outs, &w);
    let own_fsyncs = e.fsyncs().zip(fsyncs0).map(|(a, b)| a - b);
    ctx.close(e)?;
    let checked = verify_after_reopen(ctx, &cfg, &versions)?;
    let name = ctx.kind.name();
    eprintln!("[{name}] durable x{committers}: {:.0} commits/s", p.ops_per_s);
    let fs = match own_fsyncs {
        Some(f) => {
            format!("fsyncs {f} (engine count, phase only; {:.2} per commit)", f as f64 / p.ops.max(1) as f64)
        }
        None => "fsyncs: see perf count".to_string(),
    };
    emit(ctx.row(
        "durable",
        committers,
        p.ops_per_s,
        p.p50_us,
        p.p99_us,
        format!(
            "{} commits; {fs}; {} conflict retries; {checked} keys re-read after reopen",
            p.ops, p.retries
        ),
    ));
    Ok(())
}

async fn client(
    e: Arc<dyn Engine>,
    versions: Arc<Versions>,
    n: u64,
    w: Window,
    seed: u64,
) -> anyhow::Result<ClientOut> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = ClientOut::new();
    loop {
        let id = rng.gen_range(0..n);
        let t0 = Instant::now();
        let version = versions.next(id);
        let k = data::key(id);
        let v = data::value(id, version, VALUE_LEN);
        while !e.write(&[(&k[..], &v[..])], true).await? {
            out.retries += 1;
        }
        if !w.record(&mut out, t0) {
            return Ok(out);
        }
    }
}

fn verify_after_reopen(ctx: &Ctx, cfg: &OpenCfg, versions: &Versions) -> anyhow::Result<u64> {
    let e = ctx.open(cfg)?;
    let name = ctx.kind.name();
    let mut scratch = Vec::new();
    let mut checked = 0;
    for id in 0..ctx.sizes.durable_keys {
        let newest = versions.newest(id);
        if newest == 0 {
            continue;
        }
        let v = ctx.rt.block_on(e.get(&data::key(id)))?;
        data::verify(name, id, v.as_deref(), VALUE_LEN, Some(newest), &mut scratch)?;
        checked += 1;
    }
    ctx.close(e)?;
    Ok(checked)
}
