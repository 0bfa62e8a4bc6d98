//! W1-W6 of mace-kv's kv_bench: prefill `mixed_keys` keys (ids in order, 1000 per commit),
//! then for each mix and for 1 and 2 threads (tasks): a warm-up, then `seconds` of
//! operations. A read is a `get` of a key drawn from the mix's distribution; an update is
//! one transaction putting a new version of such a key (retried on a conflict); a scan
//! reads `SCAN_LEN` pairs from the start of the drawn key's prefix group (kv_bench's
//! `seek(prefix).take(100)`; at fewer than 100 keys per group, i.e. scale < 0.1, it goes on
//! into the next group). Every pair read is verified: the value byte for byte, and for
//! scans the exact sequence of keys.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Ctx;
use crate::data::{self, Versions};
use crate::driver::{self, ClientOut, Window};
use crate::engine::{Engine, OpenCfg, Purpose};
use crate::report::Row;
use crate::spec::{Dist, Mix, LOAD_BATCH, MIXED_THREADS, SCAN_LEN, VALUE_LEN, ZIPF_THETA};

/// Runs the given mixes; one row per mix and thread count.
pub fn run(ctx: &Ctx, mixes: &[Mix], emit: &mut dyn FnMut(Row)) -> anyhow::Result<()> {
    let n = ctx.sizes.mixed_keys;
    let cfg = OpenCfg {
        cache_bytes: ctx.sizes.mixed_cache as usize,
        durable: false,
        purpose: Purpose::Mixed,
        value_len: VALUE_LEN,
        expected_keys: n,
    };
    let e = ctx.open(&cfg)?;
    let t = std::time::Instant::now();
    let ids: Vec<u64> = (0..n).collect();
    super::load(ctx, &e, &ids, VALUE_LEN, LOAD_BATCH)?;
    let prefill_s = t.elapsed().as_secs_f64();
    eprintln!("[{}] prefilled {n} keys in {prefill_s:.1} s", ctx.kind.name());
    let versions = Arc::new(Versions::new(n));
    for mix in mixes {
        for threads in MIXED_THREADS {
            let w = Window::new(ctx.warmup(), ctx.measure());
            let name = ctx.kind.name();
            let outs = driver::run_clients(&ctx.rt, &e, threads, |i| {
                let e = e.clone();
                let versions = versions.clone();
                let mix = *mix;
                let seed =
                    0x5EED ^ ((mix.id.as_bytes()[1] as u64) << 16) ^ ((threads as u64) << 8) ^ i as u64;
                client(e, versions, mix, n, w, seed, name)
            })?;
            let p = driver::merge(outs, &w);
            eprintln!("[{name}] {} x{threads}: {:.0} ops/s", mix.id, p.ops_per_s);
            emit(ctx.row(
                mix.id,
                threads,
                p.ops_per_s,
                p.p50_us,
                p.p99_us,
                format!(
                    "{} ops verified; {} conflict retries; prefill {n} keys {prefill_s:.1} s",
                    p.ops, p.retries
                ),
            ));
        }
    }
    ctx.close(e)
}

fn pick(rng: &mut StdRng, dist: Dist, n: u64) -> u64 {
    match dist {
        Dist::Uniform => rng.gen_range(0..n),
        Dist::Zipf => data::zipf_like(rng, n, ZIPF_THETA),
    }
}

async fn client(
    e: Arc<dyn Engine>,
    versions: Arc<Versions>,
    mix: Mix,
    n: u64,
    w: Window,
    seed: u64,
    name: &'static str,
) -> anyhow::Result<ClientOut> {
    debug_assert_eq!(u32::from(mix.read_pct) + u32::from(mix.update_pct) + u32::from(mix.scan_pct), 100);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = ClientOut::new();
    let mut scratch = Vec::with_capacity(VALUE_LEN);
    loop {
        let roll: u8 = rng.gen_range(0..100);
        let id = pick(&mut rng, mix.dist, n);
        let t0 = std::time::Instant::now();
        if roll < mix.read_pct {
            let v = e.get(&data::key(id)).await?;
            data::verify(name, id, v.as_deref(), VALUE_LEN, Some(versions.newest(id)), &mut scratch)?;
        } else if roll < mix.read_pct + mix.update_pct {
            let version = versions.next(id);
            let k = data::key(id);
            let v = data::value(id, version, VALUE_LEN);
            while !e.write(&[(&k[..], &v[..])], false).await? {
                out.retries += 1;
            }
        } else {
            scan(&*e, id, n, name, &versions, &mut scratch).await?;
        }
        if !w.record(&mut out, t0) {
            return Ok(out);
        }
    }
}

/// One kv_bench scan from the prefix group of `id`, every key and value checked.
async fn scan(
    e: &dyn Engine,
    id: u64,
    n: u64,
    name: &str,
    versions: &Versions,
    scratch: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let pairs = e.scan(&data::group_prefix(id), SCAN_LEN).await?;
    let mut expect = Some(id % data::PREFIX_GROUPS);
    for (k, v) in &pairs {
        let want = expect.ok_or_else(|| {
            data::VerifyError(format!(
                "engine {name}: scan from group of id {id} returned a key past the last"
            ))
        })?;
        if k.as_ref() != data::key(want) {
            return Err(data::VerifyError(format!(
                "engine {name}: scan from group of id {id}: got key {} where key {} (id {want}) belongs",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(&data::key(want))
            ))
            .into());
        }
        data::verify(name, want, Some(v), VALUE_LEN, Some(versions.newest(want)), scratch)?;
        expect = data::next_in_key_order(want, n);
    }
    if pairs.len() < SCAN_LEN {
        if let Some(missing) = expect {
            return Err(data::VerifyError(format!(
                "engine {name}: scan from group of id {id} stopped after {} pairs; key {} (id {missing}) is missing",
                pairs.len(),
                String::from_utf8_lossy(&data::key(missing))
            ))
            .into());
        }
    }
    Ok(())
}
