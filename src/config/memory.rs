//! The start-up memory check: the most memory the configuration lets requests and models hold, part by
//! part, against a declared budget (`limits.memory_budget_bytes`, else the container's memory limit,
//! else the machine's memory). A configuration that does not fit is refused before anything loads, with
//! every part named; one that fits is logged with its parts.
//!
//! What is counted: request bodies being read or held (`limits.max_buffered_body_bytes`), the same
//! requests decoded (at most [`DECODED_PER_BODY_BYTE`] bytes per body byte, and no more than
//! `max_concurrent_requests` bodies at their route limit), and per model its files' size (the weights)
//! plus its caches (`kv_cache_bytes` of an SLM, `cache_bytes` of a ranker). Not counted: per-step
//! working sets, which the model files bound (docs/RELIABILITY.md).

use super::{Config, ModelKind};
use std::path::Path;

/// Bytes a decoded request may take per byte of its JSON or protobuf body: a number of two bytes
/// (`0,`) becomes a 4-byte value, and a vector grown by doubling may hold twice what it uses.
pub const DECODED_PER_BODY_BYTE: u64 = 4;

/// One part of the estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What it is, with the config key that sets it.
    pub what: String,
    pub bytes: u64,
}

/// The most memory a configuration lets the server hold, by part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    pub parts: Vec<Part>,
}

impl Estimate {
    /// The estimate of `config`; model sizes are read from the files (a missing file counts 0: its
    /// load fails on its own).
    pub fn of(config: &Config) -> Estimate {
        let l = &config.limits;
        let buffered = l.max_buffered_body_bytes as u64;
        let mut parts =
            vec![Part { what: "request bodies (limits.max_buffered_body_bytes)".into(), bytes: buffered }];
        let largest_body = ["rank", "completions", "chat_completions", "tokenize", "score", "generate"]
            .iter()
            .map(|m| l.body_limit(m))
            .max()
            .unwrap_or(l.max_body_bytes) as u64;
        let held = (l.max_concurrent_requests as u64).saturating_mul(largest_body).min(buffered);
        parts.push(Part {
            what: format!(
                "decoded requests ({DECODED_PER_BODY_BYTE} × min(limits.max_concurrent_requests × largest body limit, limits.max_buffered_body_bytes))"
            ),
            bytes: held.saturating_mul(DECODED_PER_BODY_BYTE),
        });
        for m in &config.models {
            parts.push(Part {
                what: format!("model '{}' files ({})", m.name, m.path.display()),
                bytes: size_on_disk(&m.path),
            });
            let cache = match m.kind {
                ModelKind::Slm => Some(("slm.kv_cache_bytes", m.slm.kv_cache_bytes)),
                ModelKind::Ranker => Some(("ranker.cache_bytes", m.ranker.cache_bytes)),
                ModelKind::Trees | ModelKind::Additive | ModelKind::SoftTrees => None,
            };
            if let Some((key, bytes)) = cache {
                parts.push(Part { what: format!("model '{}' {key}", m.name), bytes: bytes as u64 });
            }
        }
        Estimate { parts }
    }

    pub fn total(&self) -> u64 {
        self.parts.iter().fold(0u64, |t, p| t.saturating_add(p.bytes))
    }

    /// The parts, largest first, as `what = 1.2 GiB` joined by `, `.
    pub fn describe(&self) -> String {
        let mut parts: Vec<&Part> = self.parts.iter().collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        parts.iter().map(|p| format!("{} = {}", p.what, gib(p.bytes))).collect::<Vec<_>>().join(", ")
    }
}

/// Where the budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    Config,
    Cgroup,
    MachineMemory,
}

impl BudgetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetSource::Config => "limits.memory_budget_bytes",
            BudgetSource::Cgroup => "the container's memory limit",
            BudgetSource::MachineMemory => "the machine's memory",
        }
    }
}

/// The budget: `limits.memory_budget_bytes` when set, else the cgroup's memory limit, else MemTotal;
/// `None` when none can be read.
pub fn budget(config: &Config) -> Option<(u64, BudgetSource)> {
    if config.limits.memory_budget_bytes > 0 {
        return Some((config.limits.memory_budget_bytes as u64, BudgetSource::Config));
    }
    if let Some(b) = cgroup_limit() {
        return Some((b, BudgetSource::Cgroup));
    }
    mem_total().map(|b| (b, BudgetSource::MachineMemory))
}

/// Checks `estimate` against `budget`: an error naming the parts when it does not fit.
pub fn check(estimate: &Estimate, budget: u64, source: BudgetSource) -> Result<(), String> {
    let total = estimate.total();
    if total <= budget {
        return Ok(());
    }
    Err(format!(
        "limits.memory_budget_bytes: the configuration lets the server hold up to {} but the budget ({}) is {}: {}. \
         Lower the largest of these, or raise limits.memory_budget_bytes",
        gib(total),
        source.as_str(),
        gib(budget),
        estimate.describe()
    ))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A file's size, or the sum of a folder's files (one level; a model folder has no subfolders).
fn size_on_disk(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if meta.is_file() {
        return meta.len();
    }
    let Ok(dir) = std::fs::read_dir(path) else { return 0 };
    dir.filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .fold(0u64, |t, m| t.saturating_add(m.len()))
}

/// cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes` (v1 writes a huge number for none).
fn cgroup_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes").filter(|&b| b < 1 << 60))
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::parse(toml, "test.toml").unwrap()
    }

    #[test]
    fn the_estimate_counts_bodies_decoded_requests_files_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("b.json"), vec![0u8; 24]).unwrap();
        let toml = format!(
            "[limits]\nmax_body_bytes = 1000\nmax_buffered_body_bytes = 1000000\nmax_concurrent_requests = 10\n\
             [[models]]\nname = \"r\"\nkind = \"ranker\"\npath = \"{}\"\nranker.cache_bytes = 5000\n",
            dir.path().display()
        );
        let e = Estimate::of(&config(&toml));
        let bytes: Vec<u64> = e.parts.iter().map(|p| p.bytes).collect();
        // bodies; decoded = 4 × min(10 × 1000, 1e6); the folder's two files; the history cache.
        assert_eq!(bytes, vec![1_000_000, 40_000, 1024, 5000]);
        assert_eq!(e.total(), 1_046_024);
        assert!(e.parts[2].what.contains("model 'r' files"), "{:?}", e.parts[2]);

        check(&e, 1_046_024, BudgetSource::Config).unwrap();
        let err = check(&e, 1_046_023, BudgetSource::Config).unwrap_err();
        assert!(err.starts_with("limits.memory_budget_bytes: "), "{err}");
        assert!(err.contains("request bodies (limits.max_buffered_body_bytes) = 0.00 GiB"), "{err}");
        assert!(err.contains("model 'r' ranker.cache_bytes"), "{err}");
    }

    #[test]
    fn the_defaults_fit_a_small_machine_and_a_tight_budget_is_refused() {
        let e = Estimate::of(&config(""));
        // 256 MiB of bodies and 4 × 256 MiB decoded: 1.25 GiB with no model.
        assert_eq!(e.total(), 5 * (256 << 20));
        check(&e, 2 << 30, BudgetSource::MachineMemory).unwrap();
        let err = check(&e, 1 << 30, BudgetSource::Cgroup).unwrap_err();
        assert!(err.contains("the budget (the container's memory limit) is 1.00 GiB"), "{err}");
    }

    #[test]
    fn a_declared_budget_wins_and_meminfo_parses() {
        let c = config("[limits]\nmemory_budget_bytes = 12345\n");
        assert_eq!(budget(&c), Some((12345, BudgetSource::Config)));
        assert_eq!(parse_mem_total("MemFree: 1 kB\nMemTotal:       24683784 kB\n"), Some(24683784 * 1024));
        assert_eq!(parse_mem_total("MemTotal: lots\n"), None);
    }
}
