//! The machine side: memory cgroup (v1), dropping the OS page cache, disk usage, fsync
//! counting with `perf stat`, and finding tools.

use std::path::{Path, PathBuf};

/// Where cgroup v1's memory controller is mounted.
pub const CGROUP_MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup (v1) made for one child process and removed on drop.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Makes `<root>/ringkv-peers-<pid>-<tag>` with `memory.limit_in_bytes = limit`.
    pub fn create(tag: &str, limit: u64) -> std::io::Result<Cgroup> {
        let path = Path::new(CGROUP_MEMORY_ROOT).join(format!("ringkv-peers-{}-{tag}", std::process::id()));
        if path.exists() {
            let _ = std::fs::remove_dir(&path);
        }
        std::fs::create_dir(&path)?;
        let cg = Cgroup { path };
        std::fs::write(cg.path.join("memory.limit_in_bytes"), limit.to_string())?;
        let set: u64 = cg.read("memory.limit_in_bytes").unwrap_or(0);
        if set > limit || set + (1 << 20) < limit {
            return Err(std::io::Error::other(format!("memory.limit_in_bytes reads {set}, wrote {limit}")));
        }
        Ok(cg)
    }

    /// The cgroup's directory (the child writes its pid to `tasks` in it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self, file: &str) -> Option<u64> {
        std::fs::read_to_string(self.path.join(file)).ok()?.trim().parse().ok()
    }

    /// Peak memory charged (page cache included), bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.read("memory.max_usage_in_bytes").unwrap_or(0)
    }

    /// Times the limit was hit (reclaim ran).
    pub fn failcnt(&self) -> u64 {
        self.read("memory.failcnt").unwrap_or(0)
    }

    /// Processes the OOM killer killed in this group.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty once its process exited; charges move to the parent group.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Moves the calling process into the cgroup at `path` by writing its pid to `tasks`. Call
/// before any thread starts: `tasks` moves one thread, and threads started later inherit it.
pub fn join_cgroup(path: &Path) -> std::io::Result<()> {
    std::fs::write(path.join("tasks"), std::process::id().to_string())
}

/// True when a memory cgroup can be made here (cgroup v1 mounted read-write, root).
pub fn cgroup_available() -> bool {
    match Cgroup::create("probe", 1 << 30) {
        Ok(cg) => {
            drop(cg);
            true
        }
        Err(_) => false,
    }
}

/// `sync; echo 1 > /proc/sys/vm/drop_caches`; false when not permitted.
pub fn drop_page_cache() -> bool {
    let synced = std::process::Command::new("sync").status().map(|s| s.success()).unwrap_or(false);
    synced && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// This process's peak resident set (`VmHWM` of /proc/self/status), 0 when unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .map_or(0, |kib| kib << 10)
}

/// Allocated bytes under `dir` (as `du` counts them: 512-byte blocks).
pub fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for entry in rd.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_dir() {
                stack.push(entry.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// True when `tool` runs (`tool --version` exits 0).
pub fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The perf events counted for fsyncs.
pub const FSYNC_EVENTS: &str = "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync";

/// True when `perf stat` can count the fsync tracepoints here.
pub fn perf_counts_fsyncs() -> bool {
    std::process::Command::new("perf")
        .args(["stat", "-x,", "-e", FSYNC_EVENTS, "--", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Sums the counts in a `perf stat -x,` output file; `None` if any was not counted.
pub fn parse_perf_counts(text: &str) -> Option<u64> {
    let mut sum = 0;
    let mut seen = 0;
    for line in text.lines().filter(|l| l.contains("syscalls:")) {
        let v = line.split(',').next()?.trim();
        sum += v.parse::<u64>().ok()?;
        seen += 1;
    }
    (seen > 0).then_some(sum)
}

/// A `YYYYmmdd-HHMMSS` UTC timestamp.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_output_parses() {
        let t = "# started\n\n12,,syscalls:sys_enter_fsync,100,100.00,,\n3,,syscalls:sys_enter_fdatasync,100,100.00,,\n";
        assert_eq!(parse_perf_counts(t), Some(15));
        assert_eq!(parse_perf_counts("<not counted>,,syscalls:sys_enter_fsync,0,0,,\n"), None);
    }

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 15);
        assert_eq!(&t[8..9], "-");
    }
}
