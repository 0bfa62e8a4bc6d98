//! `ringkv`: the command line of a ringkv database.
//!
//! ```text
//! ringkv stat    <db>                                  buckets (keys, bytes), files by kind, WAL, cache
//! ringkv check   <db>                                  offline consistency check; exit 1 on problems
//! ringkv dump    <db> <bucket> [--prefix P | --from A --to B] [--format hex|utf8|json]
//! ringkv get     <db> <bucket> <key>                   the value; exit 1 when absent
//! ringkv put     <db> <bucket> <key> <value>
//! ringkv delete  <db> <bucket> <key>
//! ringkv load    <db> <bucket> <file.jsonl | ->        JSON lines: {"key": .., "value": ..}
//! ringkv compact <db>                                  checkpoints until GC has nothing to move
//! ringkv backup  <db> <dest>                           a consistent copy that opens as a database
//! ringkv --version
//! ```
//!
//! Commands that only read (`stat`, `dump`, `get`, and `check`, which opens nothing) open the
//! database read-only: they change nothing in its directory and run beside other readers,
//! not beside a writer. Keys and values on the command line are UTF-8, or hex with `--hex`.
//! JSON lines carry `key`/`value` as UTF-8 strings, or `key_hex`/`value_hex` for bytes that
//! are not UTF-8 (`dump --format json` writes what `load` reads). Long work (scans, loads)
//! shows an indicatif progress bar on a terminal. Exit status: 0 done, 1 failed (the error on
//! stderr), 2 usage error. The I/O backend follows `RINGKV_IO_BACKEND` (uring | threadpool).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use ringkv::{Bucket, Db, Options};

#[derive(Parser)]
#[command(name = "ringkv", version, about = "The command line of a ringkv database")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Buckets with their key counts and bytes, files by kind and size, WAL, cache (read-only).
    Stat { db: PathBuf },
    /// Verifies every checksum, page and record without opening the database; exit 1 on problems.
    Check { db: PathBuf },
    /// Prints the pairs of a bucket, a range or a prefix of it (read-only).
    Dump {
        db: PathBuf,
        bucket: String,
        /// Only keys starting with this.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        prefix: Option<String>,
        /// First key (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// End key (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Output: `hex` (key and value in hex, tab-separated), `utf8` (lossy), `json` (JSON lines, as `load` reads).
        #[arg(long, value_enum, default_value_t = Format::Utf8)]
        format: Format,
        /// `--prefix`, `--from` and `--to` are hex.
        #[arg(long)]
        hex: bool,
    },
    /// Prints the value of a key (read-only); exit 1 when absent.
    Get {
        db: PathBuf,
        bucket: String,
        key: String,
        /// The key is hex, and the value is printed in hex.
        #[arg(long)]
        hex: bool,
    },
    /// Sets a key (the bucket is created if missing).
    Put {
        db: PathBuf,
        bucket: String,
        key: String,
        value: String,
        /// Key and value are hex.
        #[arg(long)]
        hex: bool,
    },
    /// Deletes a key.
    Delete {
        db: PathBuf,
        bucket: String,
        key: String,
        /// The key is hex.
        #[arg(long)]
        hex: bool,
    },
    /// Loads JSON lines (`{"key": .., "value": ..}`, or `key_hex`/`value_hex`) into a bucket.
    Load {
        db: PathBuf,
        bucket: String,
        /// The file, or `-` for standard input.
        file: PathBuf,
        /// Pairs per commit.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Checkpoints until GC has no sparse file left to rewrite, then closes.
    Compact { db: PathBuf },
    /// Writes a consistent copy of the database into `dest` (new or empty).
    Backup { db: PathBuf, dest: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Hex,
    Utf8,
    Json,
}

/// A failure to report: the message, and whether it is a usage error (exit 2).
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string(), 1)
    }
}

type Out = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringkv: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("ringkv: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cmd: Cmd) -> Out {
    match cmd {
        Cmd::Stat { db } => stat(&db).await,
        Cmd::Check { db } => check(&db).await,
        Cmd::Dump { db, bucket, prefix, from, to, format, hex } => {
            let arg = |s: Option<String>| s.map(|s| bytes_of(&s, hex)).transpose();
            dump(&db, &bucket, arg(prefix)?, arg(from)?, arg(to)?, format).await
        }
        Cmd::Get { db, bucket, key, hex } => get(&db, &bucket, &bytes_of(&key, hex)?, hex).await,
        Cmd::Put { db, bucket, key, value, hex } => {
            let (k, v) = (bytes_of(&key, hex)?, bytes_of(&value, hex)?);
            write(&db, |db| async move { db.bucket(&bucket).await?.put(k, v).await }).await
        }
        Cmd::Delete { db, bucket, key, hex } => {
            let k = bytes_of(&key, hex)?;
            write(&db, |db| async move { db.existing_bucket(&bucket)?.delete(k).await }).await
        }
        Cmd::Load { db, bucket, file, batch } => load(&db, &bucket, &file, batch.max(1)).await,
        Cmd::Compact { db } => compact(&db).await,
        Cmd::Backup { db, dest } => backup(&db, &dest).await,
    }
}

/// A key or value from the command line: UTF-8, or hex with `--hex`.
fn bytes_of(s: &str, hex: bool) -> Result<Vec<u8>, Failure> {
    if !hex {
        return Ok(s.as_bytes().to_vec());
    }
    from_hex(s).ok_or_else(|| Failure(format!("{s:?} is not hex (an even number of 0-9a-f digits)"), 2))
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn to_hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(2 * b.len()), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

async fn open_read_only(path: &Path) -> Result<Db, Failure> {
    if !path.is_dir() {
        return Err(Failure(format!("{} is not a database directory", path.display()), 2));
    }
    Ok(Db::open(path, Options::default().read_only(true)).await?)
}

/// Opens `path` for writing, runs `f`, closes (close checkpoints; its error is reported).
async fn write<F, Fut>(path: &Path, f: F) -> Out
where
    F: FnOnce(Db) -> Fut,
    Fut: std::future::Future<Output = ringkv::Result<()>>,
{
    let db = Db::open(path, Options::default()).await?;
    let r = f(db.clone()).await;
    let closed = db.close().await;
    r?;
    Ok(closed?)
}

/// A spinner or bar on stderr, hidden when stderr is not a terminal (indicatif's default).
fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    let pb = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

async fn stat(path: &Path) -> Out {
    let db = open_read_only(path).await?;
    let s = db.stats();
    println!("ringkv database {} ({:?} backend)", path.display(), db.io_backend());
    println!("buckets:");
    let pb = progress(None, "counting keys");
    for name in db.buckets()? {
        let b = db.existing_bucket(&name)?;
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut it = b.iter().await?;
        while let Some((k, v)) = it.try_next().await? {
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
            pb.inc(1);
        }
        println!("  {name:<24} {keys:>12} keys {bytes:>14} bytes");
    }
    pb.finish_and_clear();
    println!("files:");
    let mut kinds: std::collections::BTreeMap<&str, (u64, u64)> = std::collections::BTreeMap::new();
    let mut add = |kind: &'static str, p: &Path| -> std::io::Result<()> {
        let e = kinds.entry(kind).or_default();
        e.0 += 1;
        e.1 += std::fs::metadata(p)?.len();
        Ok(())
    };
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = if name.starts_with("data-") {
            "data"
        } else if name.starts_with("blob-") {
            "blob"
        } else if name.starts_with("MANIFEST-") || name == "CURRENT" {
            "manifest"
        } else {
            continue;
        };
        add(kind, &e.path())?;
    }
    if let Ok(wal) = std::fs::read_dir(path.join("wal")) {
        for e in wal {
            add("wal", &e?.path())?;
        }
    }
    for (kind, (n, bytes)) in &kinds {
        println!("  {kind:<10} {n:>6} files {bytes:>14} bytes");
    }
    println!("cache:");
    println!(
        "  in use     {} of {} bytes; page table {} bytes",
        s.cache_bytes, s.cache_capacity, s.page_table_bytes
    );
    println!("  page reads {} (misses of the tree since this open)", s.page_reads);
    println!("wal:");
    println!("  records    {} replayed in memory by this read-only open", s.wal_records);
    db.close().await?;
    Ok(())
}

async fn check(path: &Path) -> Out {
    if !path.is_dir() {
        return Err(Failure(format!("{} is not a database directory", path.display()), 2));
    }
    let report = Db::check(path, &Options::default()).await?;
    print!("{report}");
    if report.is_ok() {
        Ok(())
    } else {
        Err(Failure(format!("{} problems found", report.problems.len()), 1))
    }
}

async fn dump(
    path: &Path,
    bucket: &str,
    prefix: Option<Vec<u8>>,
    from: Option<Vec<u8>>,
    to: Option<Vec<u8>>,
    format: Format,
) -> Out {
    use std::ops::Bound;
    let db = open_read_only(path).await?;
    let b = db.existing_bucket(bucket)?;
    let mut it = if let Some(p) = prefix {
        b.prefix(p).await?
    } else {
        let lo = from.map_or(Bound::Unbounded, Bound::Included);
        let hi = to.map_or(Bound::Unbounded, Bound::Excluded);
        b.range::<Vec<u8>, _>((lo, hi)).await?
    };
    let pb = progress(None, "dumping");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some((k, v)) = it.try_next().await? {
        match format {
            Format::Hex => {
                writeln!(out, "{}\t{}", to_hex(&k), to_hex(&v))?;
            }
            Format::Utf8 => {
                writeln!(out, "{}\t{}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v))?;
            }
            Format::Json => {
                let mut obj = serde_json::Map::new();
                for (name, bytes) in [("key", &k), ("value", &v)] {
                    match std::str::from_utf8(bytes) {
                        Ok(s) => obj.insert(name.into(), s.into()),
                        Err(_) => obj.insert(format!("{name}_hex"), to_hex(bytes).into()),
                    };
                }
                writeln!(out, "{}", serde_json::Value::Object(obj))?;
            }
        }
        pb.inc(1);
    }
    out.flush()?;
    pb.finish_and_clear();
    drop(out);
    db.close().await?;
    Ok(())
}

async fn get(path: &Path, bucket: &str, key: &[u8], hex: bool) -> Out {
    let db = open_read_only(path).await?;
    let v = db.existing_bucket(bucket)?.get(key).await?;
    db.close().await?;
    match v {
        Some(v) if hex => println!("{}", to_hex(&v)),
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)?;
            out.write_all(b"\n")?;
        }
        None => {
            return Err(Failure(format!("no key {:?} in bucket {bucket:?}", String::from_utf8_lossy(key)), 1))
        }
    }
    Ok(())
}

/// One JSON line: its key and value bytes.
fn pair_of(line: &str, n: u64) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let bad = |what: &str| Failure(format!("line {n}: {what}"), 1);
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
    let field = |name: &str| -> Result<Vec<u8>, Failure> {
        if let Some(s) = v.get(name).and_then(serde_json::Value::as_str) {
            return Ok(s.as_bytes().to_vec());
        }
        let hex = v.get(format!("{name}_hex")).and_then(serde_json::Value::as_str);
        hex.and_then(from_hex).ok_or_else(|| bad(&format!("no string {name:?} nor hex {name}_hex")))
    };
    Ok((field("key")?, field("value")?))
}

async fn load(path: &Path, bucket: &str, file: &Path, per_commit: usize) -> Out {
    let (reader, len): (Box<dyn BufRead>, Option<u64>) = if file == Path::new("-") {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| Failure(format!("{}: {e}", file.display()), 1))?;
        let len = f.metadata()?.len();
        (Box::new(std::io::BufReader::new(f)), Some(len))
    };
    let db = Db::open(path, Options::default()).await?;
    let result = load_into(&db, bucket, reader, len, per_commit).await;
    let closed = db.close().await;
    let n = result?;
    closed?;
    println!("loaded {n} pairs into {bucket}");
    Ok(())
}

async fn load_into(
    db: &Db,
    bucket: &str,
    reader: Box<dyn BufRead>,
    len: Option<u64>,
    per_commit: usize,
) -> Result<u64, Failure> {
    let b: Bucket = db.bucket(bucket).await?;
    let pb = progress(len, "loading");
    let (mut batch, mut n) = (db.batch(), 0u64);
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        pb.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = pair_of(&line, i as u64 + 1)?;
        batch.put(&b, k, v)?;
        n += 1;
        if batch.len() >= per_commit {
            std::mem::replace(&mut batch, db.batch()).commit().await?;
        }
    }
    batch.commit().await?;
    pb.finish_and_clear();
    Ok(n)
}

async fn compact(path: &Path) -> Out {
    let db = Db::open(path, Options::default()).await?;
    let r: ringkv::Result<()> = async {
        // Each checkpoint rewrites the pages GC marked in the one before (bounded rounds).
        for round in 1..=8 {
            let s = db.checkpoint().await?;
            println!(
                "checkpoint {round}: {} pages, {} bytes written, {} files removed, {} pages to move",
                s.pages, s.bytes, s.files_removed, s.gc_pages
            );
            if s.gc_pages == 0 {
                break;
            }
        }
        Ok(())
    }
    .await;
    let closed = db.close().await;
    r?;
    Ok(closed?)
}

async fn backup(path: &Path, dest: &Path) -> Out {
    let db = Db::open(path, Options::default()).await?;
    let pb = progress(None, "backing up");
    let r = db.backup(dest).await;
    pb.finish_and_clear();
    let closed = db.close().await;
    let s = r?;
    closed?;
    println!(
        "backup of {} at cut {} in {}: {} files, {} bytes",
        path.display(),
        s.cut_ts,
        dest.display(),
        s.files,
        s.bytes
    );
    Ok(())
}
