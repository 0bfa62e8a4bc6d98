//! The child process: one engine, one task. The parent starts `peers child --spec <json>`
//! and reads `ROW <json>` lines from its stdout; diagnostics go to stderr (a log file).
//! Exit code 2 means a value failed verification (the parent aborts the run), 1 any other
//! error.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::{Deserialize, Serialize};

use crate::data::VerifyError;
use crate::engine::EngineKind;
use crate::report::Row;
use crate::spec::{Mix, Sizes};
use crate::workloads::{self, Ctx};

/// What a child runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Task {
    /// W1-W6 (the named mixes) on one prefilled database.
    Mixed {
        /// Mix ids, W1..W6.
        mixes: Vec<String>,
    },
    /// Load the larger-than-memory data set.
    LtmLoad,
    /// One larger-than-memory read phase.
    LtmRead {
        /// Requests in flight.
        depth: usize,
    },
    /// One durable-commit phase.
    Durable {
        /// Concurrent committers.
        committers: usize,
    },
    /// The bulk load.
    Bulk,
}

/// Everything a child needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The engine.
    pub engine: EngineKind,
    /// The task.
    pub task: Task,
    /// The engine's data directory for this task.
    pub dir: PathBuf,
    /// Sizes of the run.
    pub sizes: Sizes,
    /// Measured seconds per timed phase.
    pub seconds: f64,
    /// A memory cgroup to join before anything else runs.
    pub cgroup: Option<PathBuf>,
}

/// Runs the child; the exit code tells the parent how it ended.
pub fn main(spec_json: &str) -> ExitCode {
    match run(spec_json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<VerifyError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(spec_json: &str) -> anyhow::Result<()> {
    let spec: Spec = serde_json::from_str(spec_json)?;
    if let Some(cg) = &spec.cgroup {
        // Before the runtime starts any thread: threads started later inherit the group.
        crate::sys::join_cgroup(cg)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let ctx = Ctx {
        kind: spec.engine,
        dir: spec.dir.clone(),
        sizes: spec.sizes.clone(),
        seconds: spec.seconds,
        rt,
    };
    let mut emit = |row: Row| println!("ROW {}", serde_json::to_string(&row).expect("rows serialize"));
    match &spec.task {
        Task::Mixed { mixes } => {
            let mixes: Vec<Mix> = mixes
                .iter()
                .map(|m| Mix::find(m).ok_or_else(|| anyhow::anyhow!("no mix {m}")))
                .collect::<Result<_, _>>()?;
            workloads::mixed::run(&ctx, &mixes, &mut emit)
        }
        Task::LtmLoad => workloads::ltm::load(&ctx, &mut emit),
        Task::LtmRead { depth } => workloads::ltm::read(&ctx, *depth, &mut emit),
        Task::Durable { committers } => workloads::durable::run(&ctx, *committers, &mut emit),
        Task::Bulk => workloads::bulk::run(&ctx, &mut emit),
    }
}
