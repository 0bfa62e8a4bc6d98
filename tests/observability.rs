//! Observability (issue 15, item 5): the `tracing` spans of an open with recovery and of a
//! checkpoint, captured by a `tracing_subscriber` layer. (`tests/stats.rs` checks `Stats`.)
//!
//! One test in this binary: a subscriber set per thread (`set_default`) races with
//! callsites first hit by another test's thread (their interest is cached process-wide).

#![allow(clippy::unwrap_used)] // tests, benches and examples may unwrap

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ringkv::{Db, Durability, Options};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as the layer saw it: its name and every field given or recorded.
#[derive(Debug, Clone, Default)]
struct SeenSpan {
    name: String,
    fields: HashMap<String, String>,
}

/// An event: its message, fields, and the name of the span it was in.
#[derive(Debug, Clone, Default)]
struct SeenEvent {
    message: String,
    fields: HashMap<String, String>,
    span: Option<String>,
}

#[derive(Default)]
struct Seen {
    spans: HashMap<u64, SeenSpan>,
    events: Vec<SeenEvent>,
}

/// Collects spans (with their recorded fields) and events into [`Seen`].
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collect {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut span = SeenSpan { name: attrs.metadata().name().to_owned(), ..Default::default() };
        attrs.record(&mut Fields(&mut span.fields));
        self.0.lock().unwrap().spans.insert(id.into_u64(), span);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(span) = self.0.lock().unwrap().spans.get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut e =
            SeenEvent { span: ctx.event_span(event).map(|s| s.name().to_owned()), ..Default::default() };
        event.record(&mut Fields(&mut e.fields));
        e.message = e.fields.remove("message").unwrap_or_default();
        self.0.lock().unwrap().events.push(e);
    }
}

impl Collect {
    /// The spans named `name`, in no order.
    fn spans(&self, name: &str) -> Vec<SeenSpan> {
        self.0.lock().unwrap().spans.values().filter(|s| s.name == name).cloned().collect()
    }

    fn events(&self, message: &str) -> Vec<SeenEvent> {
        self.0.lock().unwrap().events.iter().filter(|e| e.message == message).cloned().collect()
    }

    fn clear(&self) {
        let mut g = self.0.lock().unwrap();
        g.spans.clear();
        g.events.clear();
    }
}

/// The numeric field `name` of `fields` (panics, naming what it saw, if absent).
fn num(fields: &HashMap<String, String>, name: &str) -> u64 {
    fields
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric field {name} in {fields:?}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// An open that replays the WAL (the database was dropped without `close`, so nothing was
/// checkpointed) and a checkpoint, seen through their spans and events.
#[test]
fn open_with_recovery_and_checkpoint_emit_spans_with_their_fields() {
    let collect = Collect::default();
    let subscriber = tracing_subscriber::registry().with(collect.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().background_checkpoints(false).durability(Durability::Sync);
    runtime().block_on(async {
        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        let b = db.bucket("b").await.unwrap();
        for i in 0..300u32 {
            b.put(format!("key{i:05}").as_bytes(), vec![u8::try_from(i % 251).unwrap(); 200]).await.unwrap();
        }
        // No close: every commit is in the WAL only (as after a crash).
        drop(b);
        drop(db);
        collect.clear();

        let db = Db::open(dir.path(), opts.clone()).await.unwrap();
        let recover = collect.spans("ringkv.recover");
        assert_eq!(recover.len(), 1, "one recovery span: {recover:?}");
        let r = &recover[0].fields;
        // The bucket's creation is a record of the manifest, not of the WAL: 300 puts.
        assert_eq!(num(r, "records"), 300, "{r:?}");
        assert_eq!(num(r, "bytes"), 300 * (8 + 200), "{r:?}");
        assert!(num(r, "wal_bytes") > 300 * 208, "{r:?}");
        assert!(num(r, "last_ts") >= 300, "{r:?}");
        num(r, "duration_ms");
        let open = collect.spans("ringkv.open");
        assert_eq!(open.len(), 1);
        let o = &open[0].fields;
        assert_eq!(num(o, "buckets"), 1, "{o:?}");
        assert!(o.contains_key("backend") && o.contains_key("dir") && o.contains_key("duration_ms"), "{o:?}");
        let replayed = collect.events("replayed the WAL");
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed[0].span.as_deref(), Some("ringkv.recover"));
        assert_eq!(num(&replayed[0].fields, "records"), 300);
        let opened = collect.events("opened");
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].span.as_deref(), Some("ringkv.open"));

        let stats = db.checkpoint().await.unwrap();
        let ckpt = collect.spans("ringkv.checkpoint");
        assert_eq!(ckpt.len(), 1, "{ckpt:?}");
        let c = &ckpt[0].fields;
        assert!(num(c, "pages") > 0, "{c:?}");
        assert!(num(c, "bytes") > 300 * 200, "{c:?}");
        assert_eq!(num(c, "pages"), stats.pages as u64);
        assert_eq!(num(c, "bytes"), stats.bytes);
        assert_eq!(num(c, "cut_ts"), stats.cut_ts);
        assert!(stats.cut_ts >= 300);
        num(c, "duration_ms");
        num(c, "wal_segments_removed");
        let summary = collect.events("checkpoint");
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].span.as_deref(), Some("ringkv.checkpoint"));
        assert_eq!(num(&summary[0].fields, "pages"), stats.pages as u64);

        db.close().await.unwrap();
        let closed = collect.events("closed");
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].span.as_deref(), Some("ringkv.close"));
        // The close checkpointed nothing new: no second summary at info level.
        assert_eq!(collect.events("checkpoint").len(), 1);
    });
}
