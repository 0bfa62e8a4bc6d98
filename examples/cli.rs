//! A small command line tool for ringkv databases.
//!
//! ```text
//! cargo run --release --example cli -- check <path>   # offline consistency check, read-only
//! cargo run --release --example cli -- stats <path>   # read-only open (recovery in memory)
//! ```
//!
//! Exit status of `check`: 0 when the database is clean (notes allowed), 1 when problems were
//! found or the check could not run (no `CURRENT`, unreadable files), 2 on a usage error
//! (unknown command, wrong arguments, `<path>` not a directory). The backend follows
//! `RINGKV_IO_BACKEND` (uring | threadpool), default: probe `io_uring`.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ringkv::{Db, Options};

const USAGE: &str = "usage: cli check <path>   offline consistency check (changes nothing)
       cli stats <path>   open the database read-only (changes nothing) and print its counters";

fn usage(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, path) = match args.as_slice() {
        [h] if h == "-h" || h == "--help" || h == "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [cmd, path] => (cmd.as_str(), PathBuf::from(path)),
        _ => return usage("expected a command and a path"),
    };
    if !path.is_dir() {
        return usage(&format!("{} is not a directory", path.display()));
    }
    match cmd {
        "check" => check(&path),
        "stats" => stats(&path),
        other => usage(&format!("unknown command {other:?}")),
    }
}

fn check(path: &Path) -> ExitCode {
    let started = std::time::Instant::now();
    match futures::executor::block_on(Db::check(path, &Options::default())) {
        Ok(report) => {
            print!("{report}");
            println!("  took       {:.1?}", started.elapsed());
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("check of {} could not run: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

fn stats(path: &Path) -> ExitCode {
    let run = async {
        let db = Db::open(path, Options::default().read_only(true)).await?;
        let s = db.stats();
        println!("ringkv database {} ({:?} backend)", path.display(), db.io_backend());
        println!("  buckets    {}", db.buckets()?.join(", "));
        println!("  files      {} data and blob files", s.files);
        println!("  cache      {} bytes in use", s.cache_bytes);
        db.close().await
    };
    match futures::executor::block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stats of {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}
