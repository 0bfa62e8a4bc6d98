//! I/O tests of the WAL: recovery, torn tails, group commit, cancellation, rollover and
//! removal, poisoning. Every test runs on both I/O backends.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::error::Error;
use crate::io::IoDriver;
use crate::options::{Durability, IoBackend};

const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The drivers to run on: both backends, skipping (with a printed line) one that cannot
/// start on this host.
fn drivers() -> Vec<(IoBackend, IoDriver)> {
    let mut out = Vec::new();
    for backend in [IoBackend::Uring, IoBackend::ThreadPool] {
        match IoDriver::new(backend) {
            Ok(io) => out.push((backend, io)),
            Err(e) => println!("skipping backend {backend:?}: {e}"),
        }
    }
    assert!(!out.is_empty(), "no I/O backend available");
    out
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A deterministic record for `ts`: a put, and a delete every third ts.
fn rec(ts: u64, value_len: usize) -> WalRecord {
    let mut ops = vec![WalOp::Put {
        bucket: (ts % 3) as u32,
        key: Bytes::from(format!("key-{ts:08}")),
        value: Bytes::from(vec![(ts % 251) as u8; value_len]),
    }];
    if ts.is_multiple_of(3) {
        ops.push(WalOp::Delete { bucket: 1, key: Bytes::from(format!("old-{ts}")) });
    }
    WalRecord { ts, ops }
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_file_name(seq))
}

fn seqs_on_disk(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| parse_segment_file_name(e.unwrap().file_name().to_str()?))
        .collect();
    v.sort_unstable();
    v
}

fn ts_of(records: &[WalRecord]) -> Vec<u64> {
    records.iter().map(|r| r.ts).collect()
}

async fn open(io: &IoDriver, dir: &Path, frontier: u64) -> (Wal, Vec<WalRecord>) {
    Wal::open(io.clone(), dir.to_path_buf(), frontier, SEGMENT_BYTES).await.unwrap()
}

/// A WAL on the simulated disk at `dir` (`/db/wal`), its directories created and synced,
/// opened empty with `segment_bytes` segments.
#[cfg(feature = "sim")]
async fn sim_wal(io: &IoDriver, dir: &Path, segment_bytes: u64) -> (Wal, Vec<WalRecord>) {
    io.create_dir_all(dir).await.unwrap();
    io.sync_dir(Path::new("/")).await.unwrap();
    io.sync_dir(Path::new("/db")).await.unwrap();
    Wal::open(io.clone(), dir.to_path_buf(), 0, segment_bytes).await.unwrap()
}

/// Appends records `range` and waits for the last one with `Sync`.
async fn write_records(wal: &Wal, range: std::ops::RangeInclusive<u64>, value_len: usize) {
    let mut lsn = 0;
    for ts in range {
        lsn = wal.append(&rec(ts, value_len)).unwrap();
    }
    wal.wait(lsn, Durability::Sync).await.unwrap();
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn segment_names_roundtrip() {
    assert_eq!(segment_file_name(0x1f), "wal-000000000000001f.log");
    assert_eq!(parse_segment_file_name("wal-000000000000001f.log"), Some(0x1f));
    assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
    for bad in ["wal-1f.log", "wal-000000000000001f.log.tmp", "xal-000000000000001f.log"] {
        assert_eq!(parse_segment_file_name(bad), None, "{bad}");
    }
    assert_eq!(parse_segment_file_name("wal-+00000000000001f.log"), None);
}

#[test]
fn open_append_wait_reopen() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let (wal, recovered) = open(&io, dir.path(), 0).await;
            assert!(recovered.is_empty());
            let mut last = 0;
            for ts in 1..=10 {
                let lsn = wal.append(&rec(ts, 10)).unwrap();
                assert!(lsn > last, "LSNs increase");
                last = lsn;
                let wait = wal.wait(lsn, Durability::Sync);
                assert_send(&wait);
                wait.await.unwrap();
            }
            // Already durable: returns at once, whatever the level.
            for d in [Durability::Sync, Durability::Buffered, Durability::None] {
                wal.wait(last, d).await.unwrap();
            }
            assert!(wal.wait(last + 1, Durability::Sync).await.is_err());
            let stats = wal.stats();
            assert_eq!(stats.records_appended, 10);
            assert_eq!(stats.batches_written, 10);
            drop(wal);

            let (wal, recovered) = open(&io, dir.path(), 4).await;
            assert_eq!(ts_of(&recovered), (5..=10).collect::<Vec<_>>(), "{backend:?}");
            for r in &recovered {
                assert_eq!(r, &rec(r.ts, 10));
            }
            assert_eq!(wal.segment_seqs(), vec![1, 2]);
            drop(wal);
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=10).collect::<Vec<_>>());
            assert_eq!(seqs_on_disk(dir.path()), vec![1, 2, 3]);
        });
    }
}

#[test]
fn buffered_and_none_durability() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            let base = wal.stats().fsyncs;
            let lsn = wal.append(&rec(1, 8)).unwrap();
            wal.wait(lsn, Durability::None).await.unwrap();
            assert_eq!(wal.stats().batches_written, 0, "None does no I/O");
            wal.wait(lsn, Durability::Buffered).await.unwrap();
            assert_eq!(wal.stats().batches_written, 1);
            assert_eq!(wal.stats().fsyncs, base, "Buffered does not fsync ({backend:?})");
            wal.wait(lsn, Durability::Sync).await.unwrap();
            assert_eq!(wal.stats().fsyncs, base + 1, "Sync of a written record: fsync only");
            assert_eq!(wal.stats().batches_written, 1);

            // None commits reach the disk through flush().
            for ts in 2..=50 {
                let lsn = wal.append(&rec(ts, 8)).unwrap();
                wal.wait(lsn, Durability::None).await.unwrap();
            }
            wal.flush().await.unwrap();
            assert_eq!(wal.stats().batches_written, 2, "one batch for 49 records");
            wal.flush().await.unwrap();
            assert_eq!(wal.stats().fsyncs, base + 2, "nothing to flush: no fsync");
            drop(wal);
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=50).collect::<Vec<_>>());
        });
    }
}

#[test]
fn torn_tail_garbage_is_cut_and_writing_continues() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            write_records(&wal, 1..=20, 100).await;
            drop(wal);
            let seg1 = seg_path(dir.path(), 1);
            let good_len = logical_end(&seg1);
            {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&seg1).unwrap();
                // A plausible frame (length 100) whose payload is garbage and short.
                f.write_all(&100u32.to_le_bytes()).unwrap();
                f.write_all(b"\xde\xad\xbe\xefgarbage garbage").unwrap();
            }

            let (wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=20).collect::<Vec<_>>(), "{backend:?}");
            assert_eq!(std::fs::metadata(&seg1).unwrap().len(), good_len, "tail cut");
            // Writing continues in a new segment.
            assert_eq!(wal.segment_seqs(), vec![1, 2]);
            write_records(&wal, 21..=30, 100).await;
            drop(wal);

            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=30).collect::<Vec<_>>());
        });
    }
}

#[test]
fn torn_tail_mid_record_is_cut() {
    for (backend, io) in drivers() {
        for cut in [1u64, 5, 8, 9, 30] {
            let dir = tempfile::tempdir().unwrap();
            futures::executor::block_on(async {
                let (wal, _) = open(&io, dir.path(), 0).await;
                write_records(&wal, 1..=10, 20).await;
                drop(wal);
                let seg1 = seg_path(dir.path(), 1);
                // The segment as main's writer left it: ending at its last record.
                let len = logical_end(&seg1);
                let record_len = super::record::encode(&rec(10, 20)).unwrap().len() as u64;
                assert!(cut < record_len);
                let f = std::fs::OpenOptions::new().write(true).open(&seg1).unwrap();
                f.set_len(len - cut).unwrap();
                drop(f);

                let (wal, recovered) = open(&io, dir.path(), 0).await;
                assert_eq!(ts_of(&recovered), (1..=9).collect::<Vec<_>>(), "{backend:?} {cut}");
                assert_eq!(std::fs::metadata(&seg1).unwrap().len(), len - record_len);
                write_records(&wal, 11..=12, 20).await;
                drop(wal);
                let (_wal, recovered) = open(&io, dir.path(), 0).await;
                let mut want: Vec<u64> = (1..=9).collect();
                want.extend([11, 12]);
                assert_eq!(ts_of(&recovered), want);
            });
        }
    }
}

#[test]
fn bad_record_in_an_earlier_segment_is_corruption() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await; // writes segment 1
            write_records(&wal, 1..=5, 10).await;
            drop(wal);
            let (wal, _) = open(&io, dir.path(), 0).await; // writes segment 2
            write_records(&wal, 6..=10, 10).await;
            drop(wal);
            assert_eq!(seqs_on_disk(dir.path()), vec![1, 2]);
            // Flip one byte inside the last record of segment 1.
            let seg1 = seg_path(dir.path(), 1);
            let mut bytes = std::fs::read(&seg1).unwrap();
            let at = bytes.len() - 3;
            bytes[at] ^= 0x40;
            std::fs::write(&seg1, &bytes).unwrap();

            // Segment 1 was complete and synced before segment 2 existed: not a torn tail.
            let err = Wal::open(io.clone(), dir.path().to_path_buf(), 0, SEGMENT_BYTES).await.err();
            match err {
                Some(Error::Corruption { file, .. }) => assert_eq!(file, seg1, "{backend:?}"),
                other => panic!("{backend:?}: expected corruption, got {other:?}"),
            }
            // Nothing was deleted or truncated: the evidence stays for repair.
            assert_eq!(seqs_on_disk(dir.path()), vec![1, 2]);
            assert_eq!(std::fs::read(&seg1).unwrap(), bytes);
        });
    }
}

#[test]
fn bad_headers_and_gaps() {
    for (backend, io) in drivers() {
        futures::executor::block_on(async {
            // A bad magic in a segment that is not the last: corruption at offset 0.
            let dir = tempfile::tempdir().unwrap();
            let (wal, _) = open(&io, dir.path(), 0).await;
            write_records(&wal, 1..=3, 10).await;
            drop(wal);
            drop(open(&io, dir.path(), 0).await); // segment 2, so that 1 is not the last
            // Segment 2 ends at its header, as a writer leaves it before a later segment
            // exists (its preallocated tail cut).
            let seg2 = seg_path(dir.path(), 2);
            std::fs::OpenOptions::new().write(true).open(&seg2).unwrap().set_len(logical_end(&seg2)).unwrap();
            let seg1 = seg_path(dir.path(), 1);
            let mut bytes = std::fs::read(&seg1).unwrap();
            bytes[0] = b'X';
            std::fs::write(&seg1, &bytes).unwrap();
            match Wal::open(io.clone(), dir.path().to_path_buf(), 0, SEGMENT_BYTES).await {
                Err(Error::Corruption { file, offset: 0, .. }) => assert_eq!(file, seg1),
                other => panic!("{backend:?}: expected corruption, got {:?}", other.map(|_| ())),
            }

            // A header naming the wrong seq: corruption at offset 8.
            bytes[0] = b'R';
            bytes[8] = 7;
            std::fs::write(&seg1, &bytes).unwrap();
            match Wal::open(io.clone(), dir.path().to_path_buf(), 0, SEGMENT_BYTES).await {
                Err(Error::Corruption { offset: 8, .. }) => {}
                other => panic!("expected corruption, got {:?}", other.map(|_| ())),
            }
            bytes[8] = 1;
            std::fs::write(&seg1, &bytes).unwrap();

            // A last segment whose creation was cut (short header): deleted, not an error.
            std::fs::write(seg_path(dir.path(), 3), b"RKVWA").unwrap();
            let (wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), vec![1, 2, 3]);
            assert_eq!(wal.segment_seqs(), vec![1, 2, 3]);
            drop(wal);

            // A last segment with records but a bad magic is corruption, not a torn tail.
            let seg3 = seg_path(dir.path(), 3);
            let mut last = std::fs::read(&seg3).unwrap();
            last.extend_from_slice(&super::record::encode(&rec(9, 10)).unwrap());
            last[1] = b'?';
            std::fs::write(&seg3, &last).unwrap();
            assert!(Wal::open(io.clone(), dir.path().to_path_buf(), 0, SEGMENT_BYTES)
                .await
                .is_err_and(|e| e.is_corruption()));
            std::fs::remove_file(&seg3).unwrap();

            // A gap in the sequence: corruption naming the missing segment.
            std::fs::remove_file(seg_path(dir.path(), 2)).unwrap();
            std::fs::write(seg_path(dir.path(), 3), super::record::encode_segment_header(3)).unwrap();
            match Wal::open(io.clone(), dir.path().to_path_buf(), 0, SEGMENT_BYTES).await {
                Err(Error::Corruption { file, .. }) => assert_eq!(file, seg_path(dir.path(), 2)),
                other => panic!("expected corruption, got {:?}", other.map(|_| ())),
            }
        });
    }
}

#[test]
fn group_commit_shares_fsyncs() {
    const TASKS: u64 = 64;
    const COMMITS_PER_TASK: u64 = 20;
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            let wal = Arc::new(wal);
            let base = wal.stats();
            // The engine's commit lock: ts order == append order.
            let commit_lock = Arc::new(std::sync::Mutex::new(0u64));
            let mut tasks = Vec::new();
            for _ in 0..TASKS {
                let wal = Arc::clone(&wal);
                let commit_lock = Arc::clone(&commit_lock);
                tasks.push(tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for _ in 0..COMMITS_PER_TASK {
                        let (ts, lsn) = {
                            let mut next = commit_lock.lock().unwrap();
                            *next += 1;
                            (*next, wal.append(&rec(*next, 64)).unwrap())
                        };
                        wal.wait(lsn, Durability::Sync).await.unwrap();
                        acked.push(ts);
                    }
                    acked
                }));
            }
            let mut acked = Vec::new();
            for t in tasks {
                acked.extend(t.await.unwrap());
            }
            acked.sort_unstable();
            let total = TASKS * COMMITS_PER_TASK;
            assert_eq!(acked, (1..=total).collect::<Vec<_>>());
            let stats = wal.stats();
            let fsyncs = stats.fsyncs - base.fsyncs;
            println!(
                "{backend:?}: {total} commits, {} batches, {fsyncs} fsyncs, {} bytes",
                stats.batches_written, stats.bytes_written
            );
            assert_eq!(stats.records_appended, total);
            assert!(fsyncs < total, "{backend:?}: {fsyncs} fsyncs for {total} commits");
            assert!(fsyncs <= stats.batches_written);
            drop(Arc::into_inner(wal).expect("tasks are done"));

            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=total).collect::<Vec<_>>());
            for r in &recovered {
                assert_eq!(r, &rec(r.ts, 64));
            }
        });
    }
}

/// Polls `fut` once with a no-op waker and drops it.
fn poll_once_and_drop<F: Future>(fut: F) -> bool {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    matches!(fut.as_mut().poll(&mut cx), Poll::Ready(_))
}

#[test]
fn dropped_waiter_does_not_stall_others() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            let wal = Arc::new(wal);
            let mut pending_seen = 0;
            for round in 0..50u64 {
                let lsn_a = wal.append(&rec(round * 3 + 1, 32)).unwrap();
                // The waiter that starts the flush is dropped mid-flush...
                if !poll_once_and_drop(wal.wait(lsn_a, Durability::Sync)) {
                    pending_seen += 1;
                }
                // ...and so is one that joined through select with a ready future.
                let lsn_b = wal.append(&rec(round * 3 + 2, 32)).unwrap();
                let joined = wal.wait(lsn_b, Durability::Sync);
                match futures::future::select(Box::pin(joined), futures::future::ready(())).await {
                    futures::future::Either::Left((r, _)) => r.unwrap(),
                    futures::future::Either::Right(((), joined)) => drop(joined),
                }
                // Others still get through, concurrently.
                let lsn_c = wal.append(&rec(round * 3 + 3, 32)).unwrap();
                let (w1, w2) = (Arc::clone(&wal), Arc::clone(&wal));
                let t1 = tokio::spawn(async move { w1.wait(lsn_c, Durability::Sync).await });
                let t2 = tokio::spawn(async move { w2.wait(lsn_a, Durability::Buffered).await });
                for t in [t1, t2] {
                    tokio::time::timeout(Duration::from_secs(10), t)
                        .await
                        .unwrap_or_else(|_| panic!("{backend:?}: waiter stalled in round {round}"))
                        .unwrap()
                        .unwrap();
                }
                // Everything up to lsn_c is synced now, including the dropped waiters'.
                let ready = poll_once_and_drop(wal.wait(lsn_b, Durability::Sync));
                assert!(ready, "{backend:?}: lsn {lsn_b} not synced after a later one was");
            }
            println!("{backend:?}: first poll left the flush in flight in {pending_seen}/50 rounds");
            drop(Arc::into_inner(wal).unwrap());
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=150).collect::<Vec<_>>());
        });
    }
}

#[test]
fn dropping_the_wal_mid_flush_frees_it() {
    for (_, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            let wal = Arc::new(wal);
            let lsn = wal.append(&rec(1, 8)).unwrap();
            poll_once_and_drop(wal.wait(lsn, Durability::Sync));
            let alive = wal.liveness_probe();
            drop(wal);
            assert!(!alive(), "the in-flight flush kept the WAL alive");
        });
    }
}

#[test]
fn rollover_and_remove_below() {
    const SMALL: u64 = 64 * 1024;
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let (wal, _) = Wal::open(io.clone(), dir.path().into(), 0, SMALL).await.unwrap();
            for chunk in 0..30u64 {
                write_records(&wal, chunk * 10 + 1..=chunk * 10 + 10, 1000).await;
            }
            let seqs = wal.segment_seqs();
            assert!(seqs.len() >= 5, "{backend:?}: {seqs:?}");
            assert_eq!(seqs_on_disk(dir.path()), seqs);
            for &seq in &seqs {
                let len = std::fs::metadata(seg_path(dir.path(), seq)).unwrap().len();
                assert!(len <= SMALL, "segment {seq} has {len} bytes");
            }

            let removed = wal.remove_below(150).await.unwrap();
            assert!(removed >= 1);
            let left = wal.segment_seqs();
            assert_eq!(left.len() + removed, seqs.len());
            assert_eq!(seqs_on_disk(dir.path()), left);
            assert_eq!(wal.remove_below(150).await.unwrap(), 0, "idempotent");
            drop(wal);
            let (wal, recovered) = Wal::open(io.clone(), dir.path().into(), 150, SMALL).await.unwrap();
            assert_eq!(ts_of(&recovered), (151..=300).collect::<Vec<_>>(), "{backend:?}");
            drop(wal);
            // Nothing of ts > 150 was deleted: what survives starts at or below 151.
            let (wal, all) = Wal::open(io.clone(), dir.path().into(), 0, SMALL).await.unwrap();
            assert!(all.first().unwrap().ts <= 151, "a segment holding ts 151 was deleted");
            drop(wal);

            // Everything is below the frontier: only the segment being written remains.
            let (wal, _) = Wal::open(io.clone(), dir.path().into(), 300, SMALL).await.unwrap();
            wal.remove_below(300).await.unwrap();
            assert_eq!(wal.segment_seqs().len(), 1);
            assert_eq!(seqs_on_disk(dir.path()), wal.segment_seqs());
            write_records(&wal, 301..=302, 10).await;
            drop(wal);
            let (_wal, recovered) = Wal::open(io.clone(), dir.path().into(), 0, SMALL).await.unwrap();
            assert_eq!(ts_of(&recovered), vec![301, 302]);
        });
    }
}

#[test]
fn a_batch_larger_than_a_segment_goes_whole_into_one() {
    for (_, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        futures::executor::block_on(async {
            let small = 64 * 1024;
            let (wal, _) = Wal::open(io.clone(), dir.path().into(), 0, small).await.unwrap();
            write_records(&wal, 1..=1, 10).await;
            write_records(&wal, 2..=3, 100 * 1024).await; // 200 KiB in one batch
            write_records(&wal, 4..=4, 10).await;
            assert_eq!(wal.segment_seqs(), vec![1, 2, 3]);
            drop(wal);
            let (_wal, recovered) = Wal::open(io.clone(), dir.path().into(), 0, small).await.unwrap();
            assert_eq!(ts_of(&recovered), vec![1, 2, 3, 4]);
            assert_eq!(recovered[1], rec(2, 100 * 1024));
        });
    }
}

#[test]
fn failed_write_or_fsync_poisons() {
    for (backend, io) in drivers() {
        for sync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            multi_thread().block_on(async {
                let (wal, _) = open(&io, dir.path(), 0).await;
                let wal = Arc::new(wal);
                write_records(&wal, 1..=3, 10).await;
                wal.inject_failure(sync);
                let lsn = wal.append(&rec(4, 10)).unwrap();
                let mut waiters = Vec::new();
                for _ in 0..4 {
                    let w = Arc::clone(&wal);
                    waiters.push(tokio::spawn(async move { w.wait(lsn, Durability::Sync).await }));
                }
                for w in waiters {
                    let r = w.await.unwrap();
                    assert!(matches!(r, Err(Error::ReadOnly(_))), "{backend:?} {sync}: {r:?}");
                }
                assert!(wal.is_poisoned());
                assert!(matches!(wal.append(&rec(5, 10)), Err(Error::ReadOnly(_))));
                assert!(matches!(wal.flush().await, Err(Error::ReadOnly(_))));
                assert!(matches!(wal.wait(lsn, Durability::Buffered).await, Err(Error::ReadOnly(_))));
                drop(Arc::into_inner(wal).unwrap());
                // The acknowledged records survive; the failed one is cut or kept, never torn.
                let (_wal, recovered) = open(&io, dir.path(), 0).await;
                let got = ts_of(&recovered);
                assert!(got == vec![1, 2, 3] || got == vec![1, 2, 3, 4], "{got:?}");
            });
        }
    }
}

/// Many committers with random durabilities, some of whose waits are cancelled at random
/// points: nobody stalls, and after a final flush every appended record is recovered.
#[test]
fn random_cancellation_and_mixed_durability() {
    use rand::{Rng, SeedableRng};
    const TASKS: u64 = 16;
    const COMMITS_PER_TASK: u64 = 60;
    let seed: u64 = rand::random();
    println!("random_cancellation_and_mixed_durability seed {seed}");
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            let wal = Arc::new(wal);
            let commit_lock = Arc::new(std::sync::Mutex::new(0u64));
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let wal = Arc::clone(&wal);
                let commit_lock = Arc::clone(&commit_lock);
                tasks.push(tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ task);
                    for _ in 0..COMMITS_PER_TASK {
                        let lsn = {
                            let mut next = commit_lock.lock().unwrap();
                            *next += 1;
                            wal.append(&rec(*next, rng.gen_range(0..300))).unwrap()
                        };
                        let durability = match rng.gen_range(0..3) {
                            0 => Durability::Sync,
                            1 => Durability::Buffered,
                            _ => Durability::None,
                        };
                        let wait = wal.wait(lsn, durability);
                        if rng.gen_bool(0.3) {
                            // Cancelled after 0, 1 or a few polls.
                            let polls = rng.gen_range(0..4);
                            let mut wait = Box::pin(wait);
                            for _ in 0..polls {
                                if futures::poll!(wait.as_mut()).is_ready() {
                                    break;
                                }
                                tokio::task::yield_now().await;
                            }
                        } else {
                            tokio::time::timeout(Duration::from_secs(10), wait)
                                .await
                                .unwrap_or_else(|_| panic!("seed {seed}: waiter stalled"))
                                .unwrap();
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            wal.flush().await.unwrap();
            let stats = wal.stats();
            println!("{backend:?}: {stats:?}");
            drop(Arc::into_inner(wal).unwrap());
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            let total = TASKS * COMMITS_PER_TASK;
            assert_eq!(ts_of(&recovered), (1..=total).collect::<Vec<_>>(), "seed {seed}");
        });
    }
}

#[test]
fn sync_commits_go_out_as_one_durable_write_per_batch() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            let base = wal.stats();
            for ts in 1..=5 {
                let lsn = wal.append(&rec(ts, 64)).unwrap();
                wal.wait(lsn, Durability::Sync).await.unwrap();
            }
            let s = wal.stats();
            // Every batch was a durable write: no separate fdatasync.
            assert_eq!(s.batches_written - base.batches_written, 5, "{backend:?}");
            assert_eq!(s.dsync_writes - base.dsync_writes, 5, "{backend:?}");
            assert_eq!(s.fsyncs - base.fsyncs, 5, "{backend:?}");
            // Buffered batches, then a Sync waiter: a plain write and one fdatasync.
            for ts in 6..=8 {
                let lsn = wal.append(&rec(ts, 64)).unwrap();
                wal.wait(lsn, Durability::Buffered).await.unwrap();
            }
            let lsn = wal.append(&rec(9, 64)).unwrap();
            wal.wait(lsn, Durability::Sync).await.unwrap();
            let t = wal.stats();
            assert_eq!(t.dsync_writes, s.dsync_writes, "{backend:?}: unsynced bytes before: no durable write");
            assert_eq!(t.fsyncs - s.fsyncs, 1, "{backend:?}");
            drop(wal);
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=9).collect::<Vec<_>>());
        });
    }
}

/// The simulated crash of the one-submission durable write: every record acknowledged
/// `Sync` survives; the batch cut before its completion is either whole or cut off, never a
/// half record; and `Buffered` batches before a `Sync` one are covered by its ack.
#[cfg(feature = "sim")]
#[test]
fn a_simulated_crash_keeps_every_durable_write_acknowledged() {
    use crate::io::sim::SimDisk;
    let dir = Path::new("/db/wal");
    let mut cut_whole = 0;
    let mut cut_lost = 0;
    for seed in 0..200u64 {
        let disk = SimDisk::new(seed);
        let io = IoDriver::simulated(disk.clone());
        let acked = futures::executor::block_on(async {
            let (wal, _) = sim_wal(&io, dir, SEGMENT_BYTES).await;
            let mut acked = 0;
            // Some buffered batches (unsynced), then one Sync ack covering them.
            for ts in 1..=3 {
                let lsn = wal.append(&rec(ts, 100 + 700 * (seed % 3) as usize)).unwrap();
                wal.wait(lsn, Durability::Buffered).await.unwrap();
            }
            let lsn = wal.append(&rec(4, 64)).unwrap();
            wal.wait(lsn, Durability::Sync).await.unwrap();
            acked = acked.max(4);
            for ts in 5..=8 {
                let lsn = wal.append(&rec(ts, 64 + 600 * (seed % 2) as usize)).unwrap();
                wal.wait(lsn, Durability::Sync).await.unwrap();
                acked = ts;
            }
            assert!(wal.stats().dsync_writes >= 4, "the Sync batches after the first are durable writes");
            // One more durable write, cut by the crash before it completes.
            let lsn = wal.append(&rec(9, 2000)).unwrap();
            if poll_once_and_drop(wal.wait(lsn, Durability::Sync)) {
                acked = 9;
            }
            drop(wal);
            acked
        });
        disk.crash();
        let io = IoDriver::simulated(disk.clone());
        let (_wal, recovered) = futures::executor::block_on(Wal::open(io, dir.to_path_buf(), 0, SEGMENT_BYTES))
            .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
        let ts = ts_of(&recovered);
        assert!(ts.len() as u64 >= acked, "seed {seed}: acknowledged 1..={acked}, recovered {ts:?}");
        assert_eq!(ts, (1..=ts.len() as u64).collect::<Vec<_>>(), "seed {seed}: a prefix");
        for r in &recovered {
            let WalOp::Put { value, .. } = &r.ops[0] else { panic!("seed {seed}: a put first") };
            assert_eq!(r, &rec(r.ts, value.len()), "seed {seed}: record {} intact", r.ts);
        }
        if ts.len() == 9 {
            cut_whole += 1;
        } else {
            cut_lost += 1;
        }
    }
    // The seeds reach both fates of the cut durable write.
    assert!(cut_whole > 0 && cut_lost > 0, "kept {cut_whole}, lost {cut_lost}");
}

/// The logical end of segment `seq`'s records (header + marks + records), read with the
/// recovery reader's rules: the offset of the first frame that does not decode.
fn logical_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut at = record::SEGMENT_HEADER_LEN;
    loop {
        let Some(frame) = bytes.get(at..at + record::FRAME_LEN) else { return at as u64 };
        let Ok((len, _)) = record::decode_frame(frame.try_into().unwrap()) else { return at as u64 };
        let end = at + record::FRAME_LEN + len as usize;
        if end > bytes.len() || bytes[at..end].iter().all(|&b| b == 0) {
            return at as u64;
        }
        at = end;
    }
}

#[test]
fn a_preallocated_zero_tail_recovers_as_a_clean_end() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            write_records(&wal, 1..=20, 100).await;
            drop(wal); // as after a crash: no close
            let seg = seg_path(dir.path(), 1);
            let len = std::fs::metadata(&seg).unwrap().len();
            let end = logical_end(&seg);
            assert!(len > end, "{backend:?}: the segment is preallocated past its records ({len} <= {end})");
            assert!(std::fs::read(&seg).unwrap()[end as usize..].iter().all(|&b| b == 0));
            let (wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=20).collect::<Vec<_>>(), "{backend:?}");
            // The recovered segment ends at its last record; writing goes on in segment 2.
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), end, "{backend:?}");
            assert_eq!(wal.segment_seqs(), vec![1, 2]);
            assert_eq!(wal.stats().disk_bytes, seqs_on_disk(dir.path()).iter().map(|&s| std::fs::metadata(seg_path(dir.path(), s)).unwrap().len()).sum::<u64>());
        });
    }
}

#[test]
fn a_torn_record_inside_a_preallocated_segment_is_cut() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            write_records(&wal, 1..=5, 100).await;
            let seg = seg_path(dir.path(), 1);
            let end5 = logical_end(&seg);
            write_records(&wal, 6..=6, 3000).await;
            drop(wal);
            // Record 6's batch landed only in part: its second half is still zeros.
            let mut bytes = std::fs::read(&seg).unwrap();
            let end6 = logical_end(&seg);
            assert!(end6 > end5 + 3000);
            let cut = u64::midpoint(end5, end6);
            bytes[cut as usize..end6 as usize].fill(0);
            std::fs::write(&seg, &bytes).unwrap();
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=5).collect::<Vec<_>>(), "{backend:?}");
            // Cut after the torn batch's own mark, which landed whole.
            let cut_at = end5 + record::MARK_LEN as u64;
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), cut_at, "{backend:?}: cut at the torn batch");
        });
    }
}

#[test]
fn damage_before_the_end_of_a_preallocated_segment_is_corruption() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = open(&io, dir.path(), 0).await;
            for ts in 1..=10 {
                write_records(&wal, ts..=ts, 100).await;
            }
            drop(wal);
            let seg = seg_path(dir.path(), 1);
            let end = logical_end(&seg);
            // Zeros over a synced batch in the middle: later batch marks prove it was durable.
            let mut bytes = std::fs::read(&seg).unwrap();
            let mid = (end / 2) as usize;
            bytes[mid..mid + 200].fill(0);
            std::fs::write(&seg, &bytes).unwrap();
            let err = Wal::open(io.clone(), dir.path().to_path_buf(), 0, SEGMENT_BYTES).await.err();
            assert!(matches!(err, Some(Error::Corruption { .. })), "{backend:?}: {err:?}");
            // Nothing was cut.
            assert_eq!(std::fs::read(&seg).unwrap(), bytes);
        });
    }
}

/// A segment as main's writer left it: header, marks and records up to the end of the
/// file, no preallocated tail (the byte layout is unchanged).
#[test]
fn a_segment_written_without_preallocation_still_opens() {
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = record::encode_segment_header(1).to_vec();
        for ts in 1..=4u64 {
            let at = bytes.len() as u64;
            bytes.extend_from_slice(&record::encode_mark(at, at));
            bytes.extend_from_slice(&record::encode(&rec(ts, 50)).unwrap());
        }
        std::fs::write(seg_path(dir.path(), 1), &bytes).unwrap();
        multi_thread().block_on(async {
            let (wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=4).collect::<Vec<_>>(), "{backend:?}");
            assert_eq!(std::fs::read(seg_path(dir.path(), 1)).unwrap(), bytes, "{backend:?}: left as it was");
            write_records(&wal, 5..=6, 50).await;
            drop(wal);
            let (_wal, recovered) = open(&io, dir.path(), 0).await;
            assert_eq!(ts_of(&recovered), (1..=6).collect::<Vec<_>>(), "{backend:?}");
        });
    }
}

/// Many committers across many rollovers while the zone ahead is prepared concurrently:
/// every acknowledged record comes back, in order, and every segment but the last ends at
/// its last record (a rollover cuts the preallocated tail before the next segment exists).
#[test]
fn rollover_under_concurrent_committers_and_preparation_loses_nothing() {
    const TASKS: u64 = 8;
    const COMMITS: u64 = 300;
    // Large enough for zero fills (the first 256 KiB, then 1 MiB steps) inside a segment.
    const SMALL: u64 = 1536 * 1024;
    for (backend, io) in drivers() {
        let dir = tempfile::tempdir().unwrap();
        multi_thread().block_on(async {
            let (wal, _) = Wal::open(io.clone(), dir.path().to_path_buf(), 0, SMALL).await.unwrap();
            let wal = Arc::new(wal);
            let commit_lock = Arc::new(std::sync::Mutex::new(0u64));
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let preparer = {
                let (wal, done) = (Arc::clone(&wal), Arc::clone(&done));
                tokio::spawn(async move {
                    let mut rounds = 0u64;
                    while !done.load(std::sync::atomic::Ordering::SeqCst) {
                        wal.prepare_ahead().await.unwrap();
                        rounds += 1;
                        tokio::task::yield_now().await;
                    }
                    rounds
                })
            };
            let mut tasks = Vec::new();
            for t in 0..TASKS {
                let (wal, commit_lock) = (Arc::clone(&wal), Arc::clone(&commit_lock));
                tasks.push(tokio::spawn(async move {
                    for i in 0..COMMITS {
                        let lsn = {
                            let mut next = commit_lock.lock().unwrap();
                            *next += 1;
                            wal.append(&rec(*next, 1500)).unwrap()
                        };
                        let d = if (t + i) % 4 == 0 { Durability::Buffered } else { Durability::Sync };
                        wal.wait(lsn, d).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            wal.flush().await.unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(preparer.await.unwrap() > 0);
            let seqs = wal.segment_seqs();
            assert!(seqs.len() >= 3, "{backend:?}: {seqs:?}");
            assert!(wal.stats().zero_fill_bytes > seqs.len() as u64 * writer::PREALLOC_FIRST_BYTES, "{backend:?}: fills ran");
            // Preparations raced the rollovers: none left a file behind but the next one.
            let last = *seqs.last().unwrap();
            let left = prepared_on_disk(dir.path());
            assert!(
                left.is_empty() || left == vec![super::prepared_file_name(last + 1)],
                "{backend:?}: prepared files {left:?} with segment {last} active"
            );
            drop(Arc::into_inner(wal).unwrap());
            for &s in &seqs[..seqs.len() - 1] {
                let p = seg_path(dir.path(), s);
                assert_eq!(std::fs::metadata(&p).unwrap().len(), logical_end(&p), "{backend:?}: segment {s}");
            }
            let (_wal, recovered) = Wal::open(io.clone(), dir.path().to_path_buf(), 0, SMALL).await.unwrap();
            assert_eq!(ts_of(&recovered), (1..=TASKS * COMMITS).collect::<Vec<_>>(), "{backend:?}");
        });
    }
}

/// A flush whose batch reaches into a zero fill in progress waits for the fill before it
/// writes (zeros never land over a record): on the simulated disk, whose writes change
/// the live image when submitted, the record's bytes are not there while the fill runs.
#[cfg(feature = "sim")]
#[test]
fn a_flush_waits_for_the_zero_fill_in_its_way() {
    use crate::io::sim::SimDisk;
    let dir = Path::new("/db/wal");
    let seg = seg_path(dir, 1);
    let mut checked = 0;
    for seed in 0..20u64 {
        let disk = SimDisk::new(seed);
        let io = IoDriver::simulated(disk.clone());
        let (wal, _) = futures::executor::block_on(async {
            let (wal, r) = sim_wal(&io, dir, 4 << 20).await;
            // Past half of the first 256 KiB zone.
            for ts in 1..=15 {
                write_records(&wal, ts * 10 - 9..=ts * 10, 1000).await;
            }
            (wal, r)
        });
        disk.set_max_pending_polls(40);
        {
            disk.set_max_pending_polls(40);
            let mut prepare = pin!(wal.prepare_ahead());
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            assert!(prepare.as_mut().poll(&mut cx).is_pending() || wal.filling_from().is_none());
            let Some(start) = wal.filling_from() else {
                futures::executor::block_on(prepare).unwrap();
                continue;
            };
            let lsn = wal.append(&rec(151, 300_000)).unwrap();
            let mut wait = pin!(wal.wait(lsn, Durability::Sync));
            assert!(
                wait.as_mut().poll(&mut cx).is_pending(),
                "seed {seed}: the flush completed while the fill in its way was running"
            );
            if wal.filling_from().is_some() {
                let live = disk.read_file(&seg).unwrap();
                let at = start as usize;
                assert!(live[at..at + 4096].iter().all(|&b| b == 0), "seed {seed}: a record written into the fill");
                checked += 1;
            }
            futures::executor::block_on(async {
                prepare.await.unwrap();
                wait.await.unwrap();
            });
        }
        drop(wal);
        let (_wal, recovered) =
            futures::executor::block_on(Wal::open(io.clone(), dir.to_path_buf(), 0, 4 << 20)).unwrap();
        assert_eq!(ts_of(&recovered), (1..=151).collect::<Vec<_>>(), "seed {seed}");
    }
    assert!(checked > 0, "no seed caught the fill in flight");
}

/// Every file name in `dir` that is a prepared segment.
fn prepared_on_disk(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().map(str::to_owned))
        .filter(|n| super::is_prepared_file_name(n))
        .collect();
    v.sort_unstable();
    v
}

/// Writes 1000-byte records one durable batch at a time until the WAL has written
/// `bytes`; returns the last `ts`.
async fn write_until(wal: &Wal, mut ts: u64, bytes: u64) -> u64 {
    while wal.stats().bytes_written < bytes {
        ts += 1;
        write_records(wal, ts..=ts, 1000).await;
    }
    ts
}

/// Once half of a segment is written, `prepare_ahead` writes the next one as a `.next`
/// file (header and zeros, synced, counted in `disk_bytes`); the rollover publishes it
/// (renamed, not created) and every record reads back; an unpublished `.next` is deleted
/// by a writable open and left by a read-only one.
#[test]
fn a_segment_prepared_ahead_is_published_at_the_rollover() {
    const SEG: u64 = 1 << 20;
    for (backend, io) in drivers() {
        multi_thread().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (wal, _) = Wal::open(io.clone(), dir.path().into(), 0, SEG).await.unwrap();
            let ts = write_until(&wal, 0, SEG / 4).await;
            wal.prepare_ahead().await.unwrap();
            assert!(prepared_on_disk(dir.path()).is_empty(), "{backend:?}: prepared before half the segment");
            let ts = write_until(&wal, ts, SEG / 2 + 2000).await;
            wal.prepare_ahead().await.unwrap();
            assert_eq!(prepared_on_disk(dir.path()), vec![super::prepared_file_name(2)], "{backend:?}");
            let next = std::fs::read(dir.path().join(super::prepared_file_name(2))).unwrap();
            assert_eq!(next.len() as u64, writer::PREALLOC_FIRST_BYTES, "{backend:?}");
            assert_eq!(&next[..record::SEGMENT_HEADER_LEN], &record::encode_segment_header(2)[..], "{backend:?}");
            assert!(next[record::SEGMENT_HEADER_LEN..].iter().all(|&b| b == 0), "{backend:?}: zeros after the header");
            let on_disk: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
            assert_eq!(wal.stats().disk_bytes, on_disk, "{backend:?}: disk_bytes counts the prepared segment");
            // A second call prepares nothing more.
            wal.prepare_ahead().await.unwrap();
            assert_eq!(prepared_on_disk(dir.path()).len(), 1, "{backend:?}");
            // Past the end of segment 1: the rollover takes the prepared one.
            let ts = write_until(&wal, ts, SEG + SEG / 4).await;
            assert_eq!(wal.stats().segments_prepared, 1, "{backend:?}");
            assert_eq!(seqs_on_disk(dir.path()), vec![1, 2], "{backend:?}");
            assert!(prepared_on_disk(dir.path()).is_empty(), "{backend:?}: renamed, not copied");
            assert_eq!(
                std::fs::metadata(seg_path(dir.path(), 1)).unwrap().len(),
                logical_end(&seg_path(dir.path(), 1)),
                "{backend:?}: the first segment cut at its last record"
            );
            // The next one is prepared in turn; the WAL is dropped with it unpublished, and a
            // stray one of a later seq lies beside it.
            let ts = write_until(&wal, ts, SEG + SEG / 2 + 2000).await;
            wal.prepare_ahead().await.unwrap();
            assert_eq!(prepared_on_disk(dir.path()), vec![super::prepared_file_name(3)], "{backend:?}");
            drop(wal);
            std::fs::write(dir.path().join(super::prepared_file_name(9)), b"garbage").unwrap();
            let (ro, recovered) = Wal::open_read_only(io.clone(), dir.path().into(), 0).await.unwrap();
            assert_eq!(ts_of(&recovered), (1..=ts).collect::<Vec<_>>(), "{backend:?}: read-only");
            drop(ro);
            assert_eq!(prepared_on_disk(dir.path()).len(), 2, "{backend:?}: a read-only open changes nothing");
            let (_wal, recovered) = Wal::open(io.clone(), dir.path().into(), 0, SEG).await.unwrap();
            assert_eq!(ts_of(&recovered), (1..=ts).collect::<Vec<_>>(), "{backend:?}");
            assert!(prepared_on_disk(dir.path()).is_empty(), "{backend:?}: deleted at open");
            assert_eq!(seqs_on_disk(dir.path()), vec![1, 2, 3], "{backend:?}: a fresh segment after the recovered ones");
        });
    }
}

/// A crash anywhere in a rollover that publishes a prepared segment (the cut of the old
/// segment, the rename, the directory sync) keeps every acknowledged record and leaves a
/// log that recovers as a prefix.
#[cfg(feature = "sim")]
#[test]
fn a_crash_in_a_rollover_to_a_prepared_segment_keeps_every_acknowledged_record() {
    use crate::io::sim::SimDisk;
    const SEG: u64 = 512 * 1024;
    let dir = Path::new("/db/wal");
    let (mut published, mut lost, mut kept) = (0, 0, 0);
    for seed in 0..120u64 {
        let disk = SimDisk::new(seed);
        let io = IoDriver::simulated(disk.clone());
        let acked = futures::executor::block_on(async {
            let (wal, _) = sim_wal(&io, dir, SEG).await;
            let ts = write_until(&wal, 0, SEG / 2 + 2000).await;
            wal.prepare_ahead().await.unwrap();
            assert!(io.exists(&dir.join(super::prepared_file_name(2))).await.unwrap(), "seed {seed}: prepared");
            let ts = write_until(&wal, ts, SEG - 4000).await;
            // This batch does not fit: its flush rolls over. Cut after a few polls.
            let lsn = wal.append(&rec(ts + 1, 8000)).unwrap();
            let mut wait = pin!(wal.wait(lsn, Durability::Sync));
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            let mut acked = ts;
            for _ in 0..seed % 13 {
                if wait.as_mut().poll(&mut cx).is_ready() {
                    acked = ts + 1;
                    break;
                }
            }
            if wal.stats().segments_prepared == 1 {
                published += 1;
            }
            acked
        });
        disk.crash();
        let io = IoDriver::simulated(disk.clone());
        let (_wal, recovered) = futures::executor::block_on(Wal::open(io, dir.to_path_buf(), 0, SEG))
            .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
        let ts = ts_of(&recovered);
        assert!(ts.len() as u64 >= acked, "seed {seed}: acknowledged 1..={acked}, recovered {} records", ts.len());
        assert_eq!(ts, (1..=ts.len() as u64).collect::<Vec<_>>(), "seed {seed}: a prefix");
        for r in &recovered {
            let WalOp::Put { value, .. } = &r.ops[0] else { panic!("seed {seed}: a put first") };
            assert_eq!(r, &rec(r.ts, value.len()), "seed {seed}: record {} intact", r.ts);
        }
        if ts.len() as u64 > acked {
            kept += 1;
        } else {
            lost += 1;
        }
    }
    // The cut lands before and after the publication, and the cut batch both survives and not.
    assert!(published > 0 && published < 120, "published in {published} of 120 seeds");
    assert!(kept > 0 && lost > 0, "cut batch kept {kept}, lost {lost}");
}

/// A preparation whose future is dropped mid-way does not stop the next one: the next
/// `prepare_ahead` prepares the segment, and the rollover publishes it.
#[cfg(feature = "sim")]
#[test]
fn a_dropped_preparation_leaves_the_next_one_free() {
    use crate::io::sim::SimDisk;
    const SEG: u64 = 512 * 1024;
    let dir = Path::new("/db/wal");
    let mut cut = 0;
    for seed in 0..20u64 {
        let disk = SimDisk::new(seed);
        let io = IoDriver::simulated(disk.clone());
        futures::executor::block_on(async {
            let (wal, _) = sim_wal(&io, dir, SEG).await;
            let ts = write_until(&wal, 0, SEG / 2 + 2000).await;
            disk.set_max_pending_polls(4);
            if !poll_once_and_drop(wal.prepare_ahead()) {
                cut += 1;
            }
            disk.set_max_pending_polls(0);
            wal.prepare_ahead().await.unwrap();
            assert!(io.exists(&dir.join(super::prepared_file_name(2))).await.unwrap(), "seed {seed}: prepared");
            let ts = write_until(&wal, ts, SEG + 4000).await;
            assert_eq!(wal.stats().segments_prepared, 1, "seed {seed}: published");
            drop(wal);
            let (_wal, recovered) = Wal::open(io.clone(), dir.to_path_buf(), 0, SEG).await.unwrap();
            assert_eq!(ts_of(&recovered), (1..=ts).collect::<Vec<_>>(), "seed {seed}");
        });
    }
    assert!(cut > 0, "no seed dropped a preparation in flight");
}
