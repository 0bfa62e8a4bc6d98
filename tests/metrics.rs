//! The `metrics` feature (issue 15, item 5): `Db::publish_metrics` pushes `Stats` through
//! the `metrics` facade, seen here by `metrics-util`'s debugging recorder.

#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap
#![allow(clippy::float_cmp)] // the gauges hold small integers, exact in f64

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use ringkv::{Db, Options};

#[test]
fn publish_metrics_exports_gauges_counters_and_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = rt.block_on(async {
        let db = Db::open(dir.path(), Options::default().background_checkpoints(false)).await.unwrap();
        let a = db.bucket("a").await.unwrap();
        for i in 0..30u32 {
            a.put(format!("k{i:03}"), [0u8; 10]).await.unwrap();
        }
        for i in 0..5u32 {
            a.get(format!("k{i:03}")).await.unwrap().unwrap();
        }
        db.checkpoint().await.unwrap();
        db
    });
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || db.publish_metrics());
    let db_label = dir.path().display().to_string();
    let snapshot = snapshotter.snapshot().into_vec();
    let find = |kind: MetricKind, name: &str, label: Option<(&str, &str)>| -> &DebugValue {
        snapshot
            .iter()
            .find(|(k, _, _, _)| {
                k.kind() == kind
                    && k.key().name() == name
                    && k.key().labels().any(|l| l.key() == "db" && l.value() == db_label)
                    && label.is_none_or(|(lk, lv)| k.key().labels().any(|l| l.key() == lk && l.value() == lv))
            })
            .map_or_else(|| panic!("no {kind:?} {name} {label:?} in {snapshot:?}"), |(_, _, _, v)| v)
    };
    let gauge = |name, label| match find(MetricKind::Gauge, name, label) {
        DebugValue::Gauge(v) => v.into_inner(),
        other => panic!("{other:?}"),
    };
    let counter = |name| match find(MetricKind::Counter, name, None) {
        DebugValue::Counter(v) => *v,
        other => panic!("{other:?}"),
    };
    assert_eq!(gauge("ringkv_bucket_keys", Some(("bucket", "a"))), 30.0);
    assert_eq!(gauge("ringkv_bucket_bytes", Some(("bucket", "a"))), 30.0 * (4.0 + 10.0));
    assert!(gauge("ringkv_disk_bytes", Some(("kind", "data"))) > 0.0);
    assert!(gauge("ringkv_disk_bytes", Some(("kind", "wal"))) > 0.0);
    assert!(gauge("ringkv_disk_bytes", Some(("kind", "manifest"))) > 0.0);
    assert_eq!(counter("ringkv_commits_total"), 30);
    assert_eq!(counter("ringkv_reads_total"), 5);
    assert_eq!(counter("ringkv_cache_hits_total"), 5);
    assert_eq!(counter("ringkv_checkpoints_total"), 1);
    match find(MetricKind::Histogram, "ringkv_commit_seconds", None) {
        DebugValue::Histogram(v) => {
            assert_eq!(v.len(), 30);
            assert!(v.iter().all(|s| s.into_inner() > 0.0 && s.into_inner() < 60.0));
        }
        other => panic!("{other:?}"),
    }
    // A second publish records only the latencies since the first.
    rt.block_on(async { db.existing_bucket("a").unwrap().get("k001").await.unwrap() });
    metrics::with_local_recorder(&recorder, || db.publish_metrics());
    let snapshot = snapshotter.snapshot().into_vec();
    let reads = snapshot
        .iter()
        .find(|(k, _, _, _)| k.key().name() == "ringkv_read_seconds")
        .map(|(_, _, _, v)| v)
        .unwrap();
    // The debugging recorder's snapshot drains histograms: only the new read is there.
    assert!(matches!(reads, DebugValue::Histogram(v) if v.len() == 1), "{reads:?}");
    rt.block_on(db.close()).unwrap();
}
