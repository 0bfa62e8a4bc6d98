//! The fuzz corpora, replayed on stable as an ordinary test.
//!
//! For every target of `fuzz/` (one per on-disk decoder, see `ringkv::fuzzing`):
//! 1. every file of `fuzz/corpus/<target>/` and of `fuzz/artifacts/<target>/` (crash
//!    regressions, where any are committed) goes through `ringkv::fuzzing::<target>`;
//! 2. then a few thousand cheap mutations of those files (bit flips, interesting bytes and
//!    words, truncations, deletions, insertions, splices) from a seeded xorshift, so that
//!    each run exercises the decoders a little beyond the saved corpus. The seed is printed;
//!    `RINGKV_FUZZ_SEED=<n>` replays one, `RINGKV_FUZZ_MUTATIONS=<n>` sets the count. An input
//!    that fails is written under the test's temporary directory, ready for
//!    `cargo +nightly fuzz run <target> <file>`.
//!
//! `write_seed_corpus` (ignored) writes the seed corpora: real encodings made by the
//! engine, from a database session and from its encoders. See `/work/notes/fuzz.md`.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::collections::BTreeSet;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The function a fuzz target runs.
type Target = fn(&[u8]);

/// Every fuzz target, with the function it runs.
const TARGETS: &[(&str, Target)] = &[
    ("wal_record", ringkv::fuzzing::wal_record),
    ("wal_segment_header", ringkv::fuzzing::wal_segment_header),
    ("data_frame", ringkv::fuzzing::data_frame),
    ("blob_frame", ringkv::fuzzing::blob_frame),
    ("footer", ringkv::fuzzing::footer),
    ("address_ranges", ringkv::fuzzing::address_ranges),
    ("relocation_table", ringkv::fuzzing::relocation_table),
    ("page_image", ringkv::fuzzing::page_image),
    ("leaf_page", ringkv::fuzzing::leaf_page),
    ("inner_page", ringkv::fuzzing::inner_page),
    ("manifest_edit", ringkv::fuzzing::manifest_edit),
    ("manifest_snapshot", ringkv::fuzzing::manifest_snapshot),
    ("current", ringkv::fuzzing::current),
    ("life_cycle", ringkv::fuzzing::life_cycle),
];

/// Mutations per target when `RINGKV_FUZZ_MUTATIONS` is not set.
const MUTATIONS: usize = 4000;
/// Mutated inputs are cut to this length.
const MAX_INPUT_LEN: usize = 64 * 1024;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted by name; none if it does not exist.
fn read_inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.expect("corpus entry").path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| (p.clone(), fs::read(&p).expect("corpus file")))
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// 64-bit FNV-1a: names seed files and derives each target's default mutation seed.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One to four mutations of `input`, drawing splices from `corpus`.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    const BYTES: [u8; 6] = [0, 1, 0x7F, 0x80, 0xFE, 0xFF];
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = if rng.below(2) == 0 { BYTES[rng.below(BYTES.len())] } else { rng.next() as u8 };
            }
            2 => v.truncate(rng.below(len + 1)),
            3 if len >= 4 => {
                // A length or count field: small, off by one, huge.
                let i = rng.below(len - 3);
                let old = u32::from_le_bytes(v[i..i + 4].try_into().expect("4 bytes"));
                let words = [0, 1, len as u32, old.wrapping_add(1), old.wrapping_sub(1), u32::MAX, 1 << 31];
                v[i..i + 4].copy_from_slice(&words[rng.below(words.len())].to_le_bytes());
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                v.drain(at..at + n);
            }
            5 => {
                // Insert a piece of this input or of another corpus file.
                let src = &corpus[rng.below(corpus.len())].1;
                let src = if rng.below(2) == 0 || src.is_empty() { v.clone() } else { src.clone() };
                if !src.is_empty() {
                    let from = rng.below(src.len());
                    let n = 1 + rng.below((src.len() - from).min(256));
                    let at = rng.below(len + 1);
                    v.splice(at..at, src[from..from + n].iter().copied());
                }
            }
            _ => {
                // Splice: a prefix of this input, a suffix of another.
                let other = &corpus[rng.below(corpus.len())].1;
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
        }
    }
    v.truncate(MAX_INPUT_LEN);
    v
}

/// Runs `f` on `input`; on a panic, saves the input and fails naming it and `what`.
fn run_one(target: &str, f: Target, input: &[u8], what: &dyn Fn() -> String) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures").join(target);
        fs::create_dir_all(&dir).expect("failure dir");
        let file = dir.join(format!("input-{:016x}", fnv64(input)));
        fs::write(&file, input).expect("failure input");
        panic!(
            "fuzz target {target} failed on {} ({} bytes, saved as {}; replay it with \
             `cargo +nightly fuzz run {target} {}` in fuzz/)",
            what(),
            input.len(),
            file.display(),
            file.display()
        );
    }
}

/// Replays the corpus and artifacts of `target`, then mutations of them.
fn replay(target: &str) {
    let f = TARGETS.iter().find(|(name, _)| *name == target).expect("a listed target").1;
    let start = Instant::now();
    let corpus = read_inputs(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is empty or missing");
    let artifacts = read_inputs(&fuzz_dir().join("artifacts").join(target));
    for (path, input) in corpus.iter().chain(&artifacts) {
        run_one(target, f, input, &|| path.display().to_string());
    }
    let seed = env_u64("RINGKV_FUZZ_SEED").unwrap_or_else(|| fnv64(target.as_bytes()));
    let count = env_u64("RINGKV_FUZZ_MUTATIONS").map_or(MUTATIONS, |n| n as usize);
    let mut rng = Rng(seed | 1);
    for i in 0..count {
        let (path, input) = &corpus[rng.below(corpus.len())];
        let m = mutate(&mut rng, input, &corpus);
        run_one(target, f, &m, &|| format!("mutation {i} of {} (RINGKV_FUZZ_SEED={seed})", path.display()));
    }
    let bytes: usize = corpus.iter().map(|(_, b)| b.len()).sum();
    println!(
        "{target}: {} corpus files ({bytes} bytes), {} artifacts, {count} mutations (seed {seed}) in {:?}",
        corpus.len(),
        artifacts.len(),
        start.elapsed()
    );
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() {
            replay(stringify!($name));
        })*

        /// The list above, `TARGETS`, the corpus directories and `fuzz/fuzz_targets/` agree.
        #[test]
        fn every_target_is_replayed() {
            let tested: BTreeSet<&str> = [$(stringify!($name)),*].into_iter().collect();
            let listed: BTreeSet<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(tested, listed);
            let names = |dir: PathBuf, ext: &str| -> BTreeSet<String> {
                fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .map(|e| e.expect("entry").file_name().into_string().expect("utf-8 name"))
                    .filter_map(|n| n.strip_suffix(ext).map(str::to_string))
                    .collect()
            };
            let listed: BTreeSet<String> = listed.iter().map(|n| n.to_string()).collect();
            assert_eq!(names(fuzz_dir().join("fuzz_targets"), ".rs"), listed, "fuzz/fuzz_targets/");
            assert_eq!(names(fuzz_dir().join("corpus"), ""), listed, "fuzz/corpus/");
        }
    };
}

replay_tests!(
    wal_record,
    wal_segment_header,
    data_frame,
    blob_frame,
    footer,
    address_ranges,
    relocation_table,
    page_image,
    leaf_page,
    inner_page,
    manifest_edit,
    manifest_snapshot,
    current,
    life_cycle,
);

// ---------------------------------------------------------------------------------------
// Seed corpora

mod seeds {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use ringkv::manifest::{manifest_name, BucketMeta, Edit, FileMeta, ManifestState, PageLoc};
    use ringkv::store::data_file::{self, FileBuilder, FileKind, FOOTER_LEN};
    use ringkv::tree::node::{BlobCell, Bounds, Entry, InnerBase, LeafBase, Value, Version};
    use ringkv::tree::page;
    use ringkv::wal::record;
    use ringkv::wal::{WalOp, WalRecord};
    use ringkv::{Db, Options};

    /// Seed inputs by target.
    pub type Seeds = BTreeMap<&'static str, Vec<Vec<u8>>>;

    fn add(seeds: &mut Seeds, target: &'static str, input: Vec<u8>) {
        let v = seeds.entry(target).or_default();
        if !v.contains(&input) {
            v.push(input);
        }
    }

    /// Splits a data or blob file into the seeds of every target that reads a part of it.
    fn add_file(seeds: &mut Seeds, file: &[u8]) {
        let path = std::path::Path::new("seed");
        let at = file.len() - FOOTER_LEN;
        let footer = data_file::parse_footer(&file[at..], path, file.len() as u64).expect("engine footer");
        let mut f = (file.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(&file[at..]);
        add(seeds, "footer", f);
        let (ranges_at, reloc_at) = (footer.ranges_offset as usize, footer.reloc_offset as usize);
        add(seeds, "address_ranges", file[ranges_at..reloc_at].to_vec());
        let mut t = footer.ranges_offset.to_le_bytes().to_vec();
        t.extend_from_slice(&file[reloc_at..at]);
        add(seeds, "relocation_table", t);
        let (_, relocs) =
            data_file::parse_tables(&file[ranges_at..at], &footer, path).expect("engine tables");
        match footer.kind {
            FileKind::Data => {
                add(seeds, "data_frame", file.to_vec());
                for e in relocs {
                    add(seeds, "page_image", file[e.offset as usize..][..e.len as usize].to_vec());
                }
            }
            FileKind::Blob => add(seeds, "blob_frame", file.to_vec()),
        }
    }

    /// Splits a WAL segment into its header and records.
    fn add_segment(seeds: &mut Seeds, seg: &[u8]) {
        add(seeds, "wal_segment_header", seg[..record::SEGMENT_HEADER_LEN].to_vec());
        let mut rest = &seg[record::SEGMENT_HEADER_LEN..];
        while let Ok((_, used)) = record::decode(rest) {
            add(seeds, "wal_record", rest[..used].to_vec());
            rest = &rest[used..];
        }
    }

    /// Splits a manifest into the whole file and each record's payload.
    fn add_manifest(seeds: &mut Seeds, file: &[u8]) {
        add(seeds, "manifest_snapshot", file.to_vec());
        let mut pos = 0;
        while pos + 8 <= file.len() {
            let len = u32::from_le_bytes(file[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            add(seeds, "manifest_edit", file[pos + 8..pos + 8 + len].to_vec());
            pos += 8 + len;
        }
    }

    /// Every file of a database directory, split into seeds.
    fn harvest(seeds: &mut Seeds, dir: &std::path::Path) {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.extend(std::fs::read_dir(dir.join("wal")).into_iter().flatten().map(|e| e.unwrap().path()));
        names.sort();
        for p in names.into_iter().filter(|p| p.is_file()) {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            let bytes = std::fs::read(&p).unwrap();
            if name == "CURRENT" {
                add(seeds, "current", bytes);
            } else if name.starts_with("MANIFEST-") {
                add_manifest(seeds, &bytes);
            } else if name.starts_with("data-") || name.starts_with("blob-") {
                add_file(seeds, &bytes);
            } else if name.starts_with("wal-") {
                add_segment(seeds, &bytes);
            }
        }
    }

    /// A database session: buckets, single and multi-op transactions, overwrites, deletes,
    /// blob values, leaf splits, checkpoints, a dropped bucket, close; its files are
    /// harvested after each checkpoint and after close.
    async fn session(seeds: &mut Seeds) {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options::default().background_checkpoints(false).inline_limit(200);
        let db = Db::open(dir.path(), opts).await.unwrap();
        let users = db.bucket("users").await.unwrap();
        let logs = db.bucket("logs").await.unwrap();
        for i in 0..24u32 {
            users.put(format!("user{i:03}"), format!("v{i}")).await.unwrap();
        }
        let mut tx = users.begin().unwrap();
        tx.put(b"alice", b"42").unwrap();
        tx.put(b"k", b"").unwrap();
        tx.delete(b"user003").unwrap();
        tx.put(b"bob", b"").unwrap();
        tx.commit().await.unwrap();
        logs.put(b"big", vec![0xAB; 300]).await.unwrap();
        logs.put(b"bigger", vec![0xCD; 700]).await.unwrap();
        let snap = db.snapshot().unwrap(); // keeps old versions alive through the checkpoint
        users.put(b"alice", b"43").await.unwrap();
        users.delete(b"bob").await.unwrap();
        db.checkpoint().await.unwrap();
        harvest(seeds, dir.path());
        for i in 0..160u32 {
            logs.put(format!("line{i:05}"), format!("entry number {i} of the log")).await.unwrap();
        }
        logs.put(b"big", vec![0xEF; 250]).await.unwrap();
        db.checkpoint().await.unwrap();
        drop(snap);
        db.drop_bucket("users").await.unwrap();
        let tmp = db.bucket("tmp").await.unwrap();
        tmp.put(b"k", b"v").await.unwrap();
        harvest(seeds, dir.path());
        db.close().await.unwrap();
        harvest(seeds, dir.path());
    }

    fn leaf() -> LeafBase {
        let v = |ts, value| Version { ts, value };
        LeafBase::from_entries(
            &Bounds { low: Bytes::from_static(b"b"), high: Some(Bytes::from_static(b"m")), right: 9 },
            &[
                Entry {
                    key: Bytes::from_static(b"b"),
                    versions: vec![
                        v(30, Value::Inline(Bytes::from_static(b"new"))),
                        v(20, Value::Tombstone),
                        v(10, Value::Inline(Bytes::new())),
                    ],
                },
                Entry {
                    key: Bytes::from_static(b"c"),
                    versions: vec![v(5, Value::Blob(Arc::new(BlobCell::on_disk(77, 5000))))],
                },
                Entry { key: Bytes::from_static(b"lz"), versions: vec![v(1, Value::Tombstone)] },
            ],
        )
    }

    /// Encodings made directly by the engine's encoders, for shapes a short session may
    /// not write: every version kind, inner pages, every manifest edit, edge values.
    fn leaf_pages(seeds: &mut Seeds) {
        use ringkv::tree::leaf::LeafBuilder;
        let v = |ts: u64, value: Option<&'static [u8]>| Version {
            ts,
            value: value.map_or(Value::Tombstone, |b| Value::Inline(Bytes::from_static(b))),
        };
        add(seeds, "leaf_page", LeafBuilder::new(Bytes::new(), None, 0).finish().bytes().to_vec());
        let mut b = LeafBuilder::new(Bytes::from_static(b"user:0"), Some(Bytes::from_static(b"user:9")), 12);
        b.push(b"user:1", &[v(7, Some(b"alice"))]);
        b.push(b"user:10", &[v(9, None), v(4, Some(b"bob")), v(2, Some(b""))]);
        b.push(b"user:2", &[v(3, Some(&[0xff; 40]))]);
        add(seeds, "leaf_page", b.finish().bytes().to_vec());
        let mut b = LeafBuilder::new(Bytes::from_static(b"a"), None, 0);
        b.push(b"abcd", &[v(1, Some(b"x"))]);
        b.push(b"abcde", &[v(1, Some(b"y"))]);
        b.push(b"b", &[v(1, None)]);
        add(seeds, "leaf_page", b.finish().bytes().to_vec());
    }

    fn from_encoders(seeds: &mut Seeds) {
        leaf_pages(seeds);
        let mut pages = Vec::new();
        let mut out = Vec::new();
        page::encode_leaf(&leaf(), &mut out, &mut |c| c.addr());
        pages.push(out);
        let mut out = Vec::new();
        page::encode_leaf(&LeafBase::default(), &mut out, &mut |c| c.addr());
        pages.push(out);
        let inner = InnerBase::build(
            &Bounds { low: Bytes::new(), high: None, right: 0 },
            &[(Bytes::new(), 2), (Bytes::from_static(b"k"), 3), (Bytes::from_static(b"t"), 4)],
        );
        let mut out = Vec::new();
        page::encode_inner(&inner, &mut out);
        add(seeds, "inner_page", out.clone());
        pages.push(out);
        // An index page with a stripped prefix, hints that tie, a right link.
        let seps: Vec<(Bytes, u64)> = ["user:0001", "user:0001a", "user:0002", "user:00020000", "user:0100"]
            .iter()
            .enumerate()
            .map(|(i, s)| (Bytes::from_static(s.as_bytes()), i as u64 + 7))
            .collect();
        let bounds = Bounds { low: seps[0].0.clone(), high: Some(Bytes::from_static(b"user:1")), right: 99 };
        let mut out = Vec::new();
        page::encode_inner(&InnerBase::build(&bounds, &seps), &mut out);
        add(seeds, "inner_page", out);
        let mut b = FileBuilder::new(FileKind::Data);
        for (addr, p) in [5u64, 6, 40].into_iter().zip(&pages) {
            b.add(addr, Bytes::from(p.clone()));
        }
        let (chunks, _, _) = b.finish();
        add_file(seeds, &chunks.concat());
        let mut b = FileBuilder::new(FileKind::Blob);
        for (addr, v) in [(1u64, &b"value one"[..]), (2, b""), (9, &[0xFF; 40])] {
            b.add(addr, Bytes::copy_from_slice(v));
        }
        let (chunks, _, _) = b.finish();
        add_file(seeds, &chunks.concat());
        add_file(seeds, &FileBuilder::new(FileKind::Data).finish().0.concat());

        let key = |k: &'static [u8]| Bytes::from_static(k);
        for rec in [
            WalRecord { ts: 1, ops: vec![] },
            WalRecord { ts: u64::MAX, ops: vec![WalOp::Delete { bucket: 0, key: Bytes::new() }] },
            WalRecord {
                ts: 7,
                ops: vec![
                    WalOp::Put { bucket: 1, key: key(b"k1"), value: key(b"v1") },
                    WalOp::Delete { bucket: 2, key: key(b"k2") },
                    WalOp::Put { bucket: u32::MAX, key: Bytes::new(), value: Bytes::new() },
                ],
            },
        ] {
            let enc = record::encode(&rec).unwrap().to_vec();
            add(seeds, "wal_record", enc);
        }
        for seq in [1, 0x0102_0304_0506_0708, u64::MAX] {
            add(seeds, "wal_segment_header", record::encode_segment_header(seq).to_vec());
        }

        let edits = [
            Edit::Checkpoint(42),
            Edit::Counters { next_pid: 10, next_addr: 20, next_file: 3, next_bucket: 4 },
            Edit::AddFile(FileMeta {
                id: 2,
                kind: FileKind::Data,
                size: 4096,
                ranges: vec![(1, 5), (9, 10)],
            }),
            Edit::AddFile(FileMeta { id: 3, kind: FileKind::Blob, size: 100, ranges: vec![] }),
            Edit::RemoveFile(2),
            Edit::SetPages(vec![(1, PageLoc::base(3, 100)), (2, PageLoc::freed())]),
            Edit::AddBucket(BucketMeta { id: 1, name: "users".into(), root: 1 }),
            Edit::AddBucket(BucketMeta { id: 2, name: "ünïcode".into(), root: 5 }),
            Edit::DropBucket(1),
        ];
        let mut file = Vec::new();
        let mut state = ManifestState::new();
        for e in &edits {
            state.apply(e);
            let rec = ringkv::manifest::edit::encode_record(std::slice::from_ref(e));
            add(seeds, "manifest_edit", rec[8..].to_vec());
            file.extend_from_slice(&rec);
        }
        let all = ringkv::manifest::edit::encode_record(&edits);
        add(seeds, "manifest_edit", all[8..].to_vec());
        let mut snap = ringkv::manifest::edit::encode_record(&state.snapshot());
        add(seeds, "manifest_snapshot", snap.clone());
        snap.extend_from_slice(&file);
        add(seeds, "manifest_snapshot", snap.clone());
        snap.extend_from_slice(&all[..all.len() / 2]); // a torn tail
        add(seeds, "manifest_snapshot", snap);
        // Life-cycle scripts: 8 seed bytes, then (op, x, y) triples (see
        // `ringkv::fuzzing::life_cycle`): puts, deletes, reads, checkpoints, halts, crashes.
        let script = |seed: u8, ops: &[(u8, u8, u8)]| -> Vec<u8> {
            let mut v = vec![seed; 8];
            v.extend(ops.iter().flat_map(|&(a, b, c)| [a, b, c]));
            v
        };
        let puts: Vec<(u8, u8, u8)> = (0..24u8).map(|i| (i % 3, i, i.wrapping_mul(37))).collect();
        add(seeds, "life_cycle", script(1, &[&puts[..], &[(6, 0, 0), (7, 3, 0)]].concat()));
        add(
            seeds,
            "life_cycle",
            script(2, &[&puts[..], &[(4, 0, 0), (5, 9, 0), (0, 1, 200), (6, 0, 0)]].concat()),
        );
        add(
            seeds,
            "life_cycle",
            script(3, &[&puts[..], &[(3, 2, 0), (5, 1, 0), (4, 0, 0), (6, 0, 0), (7, 2, 0)]].concat()),
        );
        for n in [1, 0xABCD, u64::MAX] {
            let name = manifest_name(n);
            add(seeds, "current", format!("{name} {:08x}\n", crc32c::crc32c(name.as_bytes())).into_bytes());
        }
    }

    /// All seeds: a real session's files and the encoders' own output.
    pub async fn all() -> Seeds {
        let mut seeds = Seeds::new();
        session(&mut seeds).await;
        from_encoders(&mut seeds);
        seeds
    }
}

/// Writes the seed corpora into `fuzz/corpus/<target>/seed-<hash>`:
/// `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes fuzz/corpus; run by hand"]
async fn write_seed_corpus() {
    let seeds = seeds::all().await;
    for (target, _) in TARGETS {
        let inputs = seeds.get(target).unwrap_or_else(|| panic!("no seed for {target}"));
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).unwrap();
        for input in inputs {
            fs::write(dir.join(format!("seed-{:016x}", fnv64(input))), input).unwrap();
        }
        println!("{target}: {} seeds, {} bytes", inputs.len(), inputs.iter().map(Vec::len).sum::<usize>());
    }
}

/// The seeds themselves pass every target (the engine reads what it writes), without the
/// corpus on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_pass_their_targets() {
    let seeds = seeds::all().await;
    for (target, f) in TARGETS {
        let inputs = seeds.get(target).unwrap_or_else(|| panic!("no seed for {target}"));
        for input in inputs {
            run_one(target, *f, input, &|| "a seed".to_string());
        }
    }
}
