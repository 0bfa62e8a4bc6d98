//! The layering of `docs/design.md`, enforced: every source file under `src/` may name
//! (`crate::<module>`, in code, not in comments) only modules of a lower layer, or its own
//! module. The order is written once here and once in the design doc.
//!
//! `KNOWN_UPWARD` lists imports that break the order and are tolerated for now (none
//! today). The test fails on any other upward import, and also when a listed one is gone
//! (so the list only ever shrinks, and shrinks in the same commit).
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)] // they test, not store
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layers from the bottom up; a module may use only modules of a strictly lower rank (or
/// itself). Modules of one rank do not use each other, except on the API floor ([`API`]),
/// whose handles name each other (`Bucket::begin` makes a `Txn`).
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("codec", 0),
    ("limits", 0),
    ("coop", 0),
    ("files", 0),
    ("obs", 0),
    ("io", 1),
    ("options", 2),
    ("wal", 3),
    ("manifest", 3),
    ("store", 3),
    ("mvcc", 4),
    ("tree", 5),
    ("engine", 6),
    ("db", 7),
    ("bucket", 7),
    ("txn", 7),
    ("batch", 7),
    ("iter", 7),
    ("check", 7),
    ("fuzzing", 8),
    ("bench", 8),
];

/// (file under `src/`, module it names): imports that break the order today.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

/// The API floor's rank.
const API: u32 = 7;

fn rank(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The top-level module a source file belongs to: `tree/forest.rs` -> `tree`.
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The modules a file names as `crate::<name>` outside comments.
fn named_modules(source: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

/// Every (file, named module) pair that breaks the order.
fn upward_imports(src: &Path) -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let rel_s = rel.to_string_lossy().replace('\\', "/");
        if rel_s == "lib.rs" {
            continue;
        }
        let own = module_of(rel);
        let own_rank = rank(&own).unwrap_or_else(|| panic!("{rel_s}: module {own} has no layer in LAYERS"));
        for named in named_modules(&std::fs::read_to_string(&file).unwrap()) {
            if named == own {
                continue;
            }
            let Some(r) = rank(&named) else { continue };
            if r > own_rank || (r == own_rank && own_rank != API) {
                found.insert((rel_s.clone(), named));
            }
        }
    }
    found
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = upward_imports(&src);
    let known: BTreeSet<(String, String)> =
        KNOWN_UPWARD.iter().map(|(f, m)| (f.to_string(), m.to_string())).collect();
    let new: Vec<_> = found.difference(&known).collect();
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(new.is_empty(), "imports against the layer order of docs/design.md (file, module): {new:?}");
    assert!(gone.is_empty(), "listed in KNOWN_UPWARD but no longer there, remove them: {gone:?}");
}

#[test]
fn the_scanner_sees_code_and_skips_comments() {
    let src =
        "use crate::tree::Forest; // crate::engine\n/// see crate::db\nlet x = crate::io::IoDriver::new();";
    let names: Vec<String> = named_modules(src).into_iter().collect();
    assert_eq!(names, vec!["io".to_string(), "tree".to_string()]);
}
