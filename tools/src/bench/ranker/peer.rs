//! (d) The ONNX Runtime peer (tools/onnx/ranker_onnx.py in `.venv-peers`), run on the same weights and
//! request as Slate, and the temporary folder they are handed over in.

use super::BenchArgs;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The ONNX Runtime peer process (`--serve`), kept running between A/B rounds: one `run N` per round.
pub(super) struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Its first line (`{"ready": true, "ort_version": …}`).
    pub(super) ready: Value,
}

impl Peer {
    pub(super) fn start(
        args: &BenchArgs,
        model_dir: &Path,
        request: &Path,
        scores_out: &Path,
        quick: bool,
    ) -> Result<Peer> {
        let (python, script) = (resolve(&args.peer_python), resolve(&args.peer_script));
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--model")
            .arg(model_dir)
            .arg("--request")
            .arg(request)
            .arg("--scores-out")
            .arg(scores_out)
            .args([
                "--threads",
                &args.threads.to_string(),
                "--warmup",
                if quick { "5" } else { "20" },
                "--serve",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!("starting {} {}", args.peer_python.display(), args.peer_script.display())
            })?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("peer stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("peer stdout"))?);
        let mut peer = Peer { child, stdin, stdout, ready: Value::Null };
        let ready = peer.read_line().context("waiting for the peer to get ready")?;
        if ready.get("ready") != Some(&Value::Bool(true)) {
            bail!("peer did not get ready: {ready}");
        }
        peer.ready = ready;
        Ok(peer)
    }

    fn read_line(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("the peer exited ({status})");
        }
        serde_json::from_str(&line).with_context(|| format!("peer output is not JSON: {line:?}"))
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `runs` timed ORT runs; milliseconds per run.
    pub(super) fn run(&mut self, runs: usize) -> Result<Vec<f64>> {
        writeln!(self.stdin, "run {runs}")?;
        self.stdin.flush()?;
        let v = self.read_line()?;
        if let Some(e) = v.get("error") {
            bail!("peer: {e}");
        }
        let times = v
            .get("times_ms")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("peer answer without times_ms: {v}"))?;
        times.iter().map(|t| t.as_f64().ok_or_else(|| anyhow!("bad time {t}"))).collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// A relative path that does not exist from the current directory is tried from the root of the source
/// checkout this binary was built from (so `target/release/slate bench ranker` works from anywhere).
fn resolve(p: &Path) -> PathBuf {
    if p.is_relative() && !p.exists() {
        // This crate is tools/ in the repository.
        let alt = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
        if alt.exists() {
            return alt;
        }
    }
    p.to_path_buf()
}

/// Why the peer cannot run, or `None` when it can.
pub(super) fn peer_missing(args: &BenchArgs) -> Option<String> {
    if !resolve(&args.peer_python).exists() {
        return Some(format!(
            "{} not found: create the peer environment with `scripts/setup-peers.sh` (numpy, onnx, onnxruntime \
             in .venv-peers), or pass --peer-python; continuing without the ONNX Runtime peer",
            args.peer_python.display()
        ));
    }
    if !resolve(&args.peer_script).exists() {
        return Some(format!(
            "{} not found (run from the repository root or pass --peer-script); continuing without the peer",
            args.peer_script.display()
        ));
    }
    None
}

/// A fresh temporary directory (removed on drop).
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn new(tag: &str) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let p = std::env::temp_dir().join(format!("slate-bench-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
