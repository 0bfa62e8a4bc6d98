//! Bulk load: `bulk_keys` keys with 128-byte values in a seeded random order, 1000 per
//! commit, relaxed, then a durable close. Reports keys/s over load + close, the bytes the
//! process wrote to storage (`write_bytes` of /proc/self/io, before open to after close),
//! the directory's allocated size (like `du`), and the process's peak RSS over load and
//! close (`VmHWM`; the cgroup's own peak, reported beside it, counts the page cache too).
//! Then reopens and checks 100,000 random keys (or all, if fewer) byte for byte.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::Ctx;
use crate::data;
use crate::engine::{OpenCfg, Purpose};
use crate::report::Row;
use crate::spec::{LOAD_BATCH, VALUE_LEN};

/// Runs the bulk load.
pub fn run(ctx: &Ctx, emit: &mut dyn FnMut(Row)) -> anyhow::Result<()> {
    let n = ctx.sizes.bulk_keys;
    let cfg = OpenCfg {
        cache_bytes: ctx.sizes.ltm_cache as usize,
        durable: false,
        purpose: Purpose::BulkLoad,
        value_len: VALUE_LEN,
        expected_keys: n,
    };
    let mut ids: Vec<u64> = (0..n).collect();
    ids.shuffle(&mut StdRng::seed_from_u64(0xB01C));
    let w0 = super::proc_write_bytes();
    let t = Instant::now();
    let e = ctx.open(&cfg)?;
    let retries = super::load(ctx, &e, &ids, VALUE_LEN, LOAD_BATCH)?;
    ctx.close(e)?;
    let secs = t.elapsed().as_secs_f64();
    let written = super::proc_write_bytes() - w0;
    let peak_rss = crate::sys::peak_rss_bytes();
    drop(ids);
    let du = crate::sys::du(&ctx.dir);
    let logical = n * (data::KEY_LEN + VALUE_LEN) as u64;
    // Read back a sample after reopening.
    let e = ctx.open(&cfg)?;
    let mut rng = StdRng::seed_from_u64(0xC4EC);
    let mut scratch = Vec::new();
    let checks = n.min(100_000);
    for i in 0..checks {
        let id = if checks == n { i } else { rng.gen_range(0..n) };
        let v = ctx.rt.block_on(e.get(&data::key(id)))?;
        data::verify(ctx.kind.name(), id, v.as_deref(), VALUE_LEN, None, &mut scratch)?;
    }
    ctx.close(e)?;
    eprintln!("[{}] bulk {n} keys in {secs:.1} s", ctx.kind.name());
    emit(ctx.row(
        "bulk",
        1,
        n as f64 / secs,
        0.0,
        0.0,
        format!(
            "{n} keys in {secs:.1} s; wrote {} MiB ({:.2}x the {} MiB of keys+values); du {} MiB; peak RSS {} MiB; {checks} keys re-read; {retries} retries",
            written >> 20,
            written as f64 / logical as f64,
            logical >> 20,
            du >> 20,
            peak_rss >> 20
        ),
    ));
    Ok(())
}
