//! ringkv quickstart: opens a database, writes 100k keys in transactions, reads them back,
//! scans, closes, reopens, verifies everything is there, and prints what it did.
//!
//! `cargo run --release --example quickstart [-- <dir>]`
//! The backend follows `RINGKV_IO_BACKEND` (uring | threadpool), default: probe `io_uring`.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::time::Instant;

use futures::TryStreamExt;
use ringkv::{Db, Options};

const KEYS: u32 = 100_000;
const PER_TXN: u32 = 1_000;

fn key(i: u32) -> String {
    format!("user:{i:08}")
}

fn value(i: u32) -> String {
    format!("value-{i}-{}", "x".repeat((i % 64) as usize))
}

fn main() -> ringkv::Result<()> {
    let dir = std::env::args().nth(1).map_or_else(
        || std::env::temp_dir().join(format!("ringkv-quickstart-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    rt.block_on(async {
        let t = Instant::now();
        let db = Db::open(&dir, Options::default()).await?;
        println!("opened {} with the {:?} backend", dir.display(), db.io_backend());
        let users = db.bucket("users").await?;
        for start in (0..KEYS).step_by(PER_TXN as usize) {
            let mut tx = users.begin()?;
            for i in start..start + PER_TXN {
                tx.put(key(i), value(i))?;
            }
            tx.commit().await?;
        }
        println!("wrote {KEYS} keys in {} transactions in {:?}", KEYS / PER_TXN, t.elapsed());

        let t = Instant::now();
        for i in (0..KEYS).step_by(7) {
            let v = users.get(key(i)).await?;
            assert_eq!(v.as_deref(), Some(value(i).as_bytes()), "key {i}");
        }
        println!("read back {} keys in {:?}", KEYS.div_ceil(7), t.elapsed());

        let t = Instant::now();
        let all: Vec<_> = users.iter().await?.try_collect().await?;
        assert_eq!(all.len(), KEYS as usize);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "scan is ordered");
        let some: Vec<_> = users.prefix("user:0001").await?.try_collect().await?;
        assert_eq!(some.len(), 10_000);
        let rev: Vec<_> =
            users.range_rev(key(10).into_bytes()..key(20).into_bytes()).await?.try_collect().await?;
        assert_eq!(rev.len(), 10);
        assert_eq!(rev[0].0.as_ref(), key(19).as_bytes());
        println!(
            "scanned {} keys, a prefix of {}, a reverse range of {} in {:?}",
            all.len(),
            some.len(),
            rev.len(),
            t.elapsed()
        );

        let ck = db.checkpoint().await?;
        println!("checkpoint: {} pages, {} bytes, frontier ts {}", ck.pages, ck.bytes, ck.cut_ts);
        users.delete(key(0)).await?;
        db.close().await?;
        println!("closed");

        let t = Instant::now();
        let db = Db::open(&dir, Options::default()).await?;
        let users = db.existing_bucket("users")?;
        assert_eq!(users.get(key(0)).await?, None);
        let mut n = 0u32;
        let mut s = users.iter().await?;
        while let Some((k, v)) = s.try_next().await? {
            n += 1;
            let i: u32 = std::str::from_utf8(&k[5..]).expect("utf8").parse().expect("number");
            assert_eq!(v.as_ref(), value(i).as_bytes());
        }
        assert_eq!(n, KEYS - 1);
        println!("reopened in {:?} and verified {n} keys (key 0 deleted before close)", t.elapsed());
        let st = db.stats();
        println!("stats: {} files, {} bytes of cache", st.files, st.cache_bytes);
        db.close().await?;
        Ok::<(), ringkv::Error>(())
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("ok");
    Ok(())
}
