//! The `ringkv` binary end to end on a temporary database: `load` (JSON lines, UTF-8 and
//! hex), `stat`, `dump` (whole, prefix, range; utf8, hex and JSON lines, which `load` reads
//! back to the same pairs), `get`, `put`, `delete`, `check`, `backup` (the copy checks clean
//! and answers `get`), `compact`, `--version`; the read-only commands leave every name and
//! byte of the directory as it was; bad input is an error with exit status 1 or 2.
#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::too_many_lines)] // a scenario reads top to bottom

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};

fn ringkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = ringkv(args);
    assert!(
        out.status.success(),
        "ringkv {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every name and byte under `dir`.
fn fingerprint(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for (k, v) in fingerprint(&p) {
                m.insert(format!("{}/{k}", p.file_name().unwrap().to_string_lossy()), v);
            }
        } else {
            m.insert(p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap());
        }
    }
    m
}

#[test]
fn the_cli_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let db_s = db.to_str().unwrap();
    // 1000 UTF-8 pairs and one pair that is not UTF-8.
    let mut lines = String::new();
    for i in 0..1000 {
        writeln!(lines, "{{\"key\": \"user/{i:04}\", \"value\": \"name {i}\"}}").unwrap();
    }
    lines.push_str("{\"key_hex\": \"ff00\", \"value_hex\": \"00ff\"}\n\n");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, &lines).unwrap();
    assert!(
        ok(&["load", db_s, "users", input.to_str().unwrap(), "--batch", "100"]).contains("loaded 1001 pairs")
    );

    let before = fingerprint(&db);
    let stat = ok(&["stat", db_s]);
    assert!(stat.contains("users") && stat.contains("1001 keys"), "{stat}");
    assert!(stat.contains("data") && stat.contains("manifest"), "{stat}");
    let dump = ok(&["dump", db_s, "users", "--prefix", "user/000"]);
    assert_eq!(dump.lines().count(), 10, "{dump}");
    assert_eq!(dump.lines().next(), Some("user/0000\tname 0"));
    let range = ok(&["dump", db_s, "users", "--from", "user/0100", "--to", "user/0103", "--format", "hex"]);
    assert_eq!(
        range.lines().collect::<Vec<_>>(),
        [
            "757365722f30313030\t6e616d6520313030",
            "757365722f30313031\t6e616d6520313031",
            "757365722f30313032\t6e616d6520313032"
        ]
    );
    assert_eq!(ok(&["get", db_s, "users", "user/0042"]), "name 42\n");
    assert_eq!(ok(&["get", db_s, "users", "ff00", "--hex"]), "00ff\n");
    assert!(ok(&["check", db_s]).contains(db_s));
    // JSON lines out, JSON lines back in: the same pairs in another database.
    let json = ok(&["dump", db_s, "users", "--format", "json"]);
    assert_eq!(json.lines().count(), 1001);
    assert!(json.contains("{\"key_hex\":\"ff00\",\"value_hex\":\"00ff\"}"), "{json}");
    assert_eq!(fingerprint(&db), before, "stat, dump, get and check changed the directory");
    let again = tmp.path().join("again");
    let json_file = tmp.path().join("dump.jsonl");
    std::fs::write(&json_file, &json).unwrap();
    ok(&["load", again.to_str().unwrap(), "users", json_file.to_str().unwrap()]);
    assert_eq!(ok(&["dump", again.to_str().unwrap(), "users", "--format", "json"]), json);

    // Writes.
    ok(&["put", db_s, "users", "user/9999", "last"]);
    assert_eq!(ok(&["get", db_s, "users", "user/9999"]), "last\n");
    ok(&["delete", db_s, "users", "user/0000"]);
    let missing = ringkv(&["get", db_s, "users", "user/0000"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no key"));
    ok(&["put", db_s, "other", "6b", "76", "--hex"]);
    assert_eq!(ok(&["get", db_s, "other", "k"]), "v\n");

    // Backup: the copy checks clean and holds the data.
    let copy = tmp.path().join("copy");
    assert!(ok(&["backup", db_s, copy.to_str().unwrap()]).contains("at cut"));
    ok(&["check", copy.to_str().unwrap()]);
    assert_eq!(ok(&["get", copy.to_str().unwrap(), "users", "user/9999"]), "last\n");
    // Compact: checkpoints, the data stays.
    for i in 0..1000 {
        if i % 10 != 0 {
            continue;
        }
        ok(&["delete", db_s, "users", &format!("user/{i:04}")]);
    }
    assert!(ok(&["compact", db_s]).contains("checkpoint 1"));
    ok(&["check", db_s]);
    assert!(ok(&["stat", db_s]).contains("902 keys"));

    // Version and errors.
    assert!(ok(&["--version"]).contains(env!("CARGO_PKG_VERSION")));
    for (args, code) in [
        (vec!["get", db_s, "nope", "k"], 1),
        (vec!["get", db_s, "users", "zz", "--hex"], 2),
        (vec!["stat", tmp.path().join("absent").to_str().unwrap()], 2),
        (vec!["frobnicate"], 2),
        (vec!["backup", db_s, copy.to_str().unwrap()], 1),
    ] {
        let out = ringkv(&args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "ringkv {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"key\": \"a\", \"value\": \"b\"}\nnot json\n").unwrap();
    let out = ringkv(&["load", db_s, "users", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}
