//! Larger than memory: `ltm_keys` values of 4 KiB (2 GiB at scale 1) are loaded in random
//! order, 256 per commit, and the engine is closed (`load`). Each read phase (`read`) runs
//! in a fresh child process that the parent has placed in a memory cgroup capped at
//! `ltm_cap` (page cache included), after `sync; echo 1 > /proc/sys/vm/drop_caches`: it
//! reopens the engine with its cache at `ltm_cache` and runs uniform random `get`s with
//! `depth` requests in flight; every value is checked byte for byte.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::Ctx;
use crate::data;
use crate::driver::{self, ClientOut, Window};
use crate::engine::{Engine, OpenCfg, Purpose};
use crate::report::Row;
use crate::spec::{LTM_LOAD_BATCH, LTM_VALUE_LEN};

fn cfg(ctx: &Ctx) -> OpenCfg {
    OpenCfg {
        cache_bytes: ctx.sizes.ltm_cache as usize,
        durable: false,
        purpose: Purpose::LargeRead,
        value_len: LTM_VALUE_LEN,
        expected_keys: ctx.sizes.ltm_keys,
    }
}

/// Loads the data set and closes the engine.
pub fn load(ctx: &Ctx, emit: &mut dyn FnMut(Row)) -> anyhow::Result<()> {
    let n = ctx.sizes.ltm_keys;
    let mut ids: Vec<u64> = (0..n).collect();
    ids.shuffle(&mut StdRng::seed_from_u64(0x17A));
    let t = Instant::now();
    let e = ctx.open(&cfg(ctx))?;
    super::load(ctx, &e, &ids, LTM_VALUE_LEN, LTM_LOAD_BATCH)?;
    ctx.close(e)?;
    let secs = t.elapsed().as_secs_f64();
    let du = crate::sys::du(&ctx.dir);
    emit(ctx.row(
        "ltm-load",
        1,
        n as f64 / secs,
        0.0,
        0.0,
        format!("{n} x 4 KiB = {} MiB in {secs:.1} s; on disk {} MiB", ctx.sizes.ltm_bytes() >> 20, du >> 20),
    ));
    Ok(())
}

/// One read phase at `depth` (the caller has dropped the page cache and capped memory).
pub fn read(ctx: &Ctx, depth: usize, emit: &mut dyn FnMut(Row)) -> anyhow::Result<()> {
    let n = ctx.sizes.ltm_keys;
    let t = Instant::now();
    let e = ctx.open(&cfg(ctx))?;
    let open_s = t.elapsed().as_secs_f64();
    let w = Window::new(ctx.warmup(), ctx.measure());
    let name = ctx.kind.name();
    let outs = driver::run_clients(&ctx.rt, &e, depth, |i| {
        client(e.clone(), n, w, 0x4EAD ^ ((depth as u64) << 20) ^ i as u64, name)
    })?;
    let p = driver::merge(outs, &w);
    eprintln!("[{name}] ltm depth {depth}: {:.0} gets/s", p.ops_per_s);
    emit(ctx.row(
        "ltm-read",
        depth,
        p.ops_per_s,
        p.p50_us,
        p.p99_us,
        format!("{} gets verified; reopen {open_s:.2} s", p.ops),
    ));
    ctx.close(e)
}

async fn client(
    e: Arc<dyn Engine>,
    n: u64,
    w: Window,
    seed: u64,
    name: &'static str,
) -> anyhow::Result<ClientOut> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = ClientOut::new();
    let mut scratch = Vec::with_capacity(LTM_VALUE_LEN);
    loop {
        let id = rng.gen_range(0..n);
        let t0 = Instant::now();
        let v = e.get(&data::key(id)).await?;
        data::verify(name, id, v.as_deref(), LTM_VALUE_LEN, None, &mut scratch)?;
        if !w.record(&mut out, t0) {
            return Ok(out);
        }
    }
}
