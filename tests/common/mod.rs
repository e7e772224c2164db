//! Shared helpers for end-to-end tests: start the real `slate` binary on free ports with a temporary
//! config, learn the bound addresses from its log, and talk to it; find what tests need from outside
//! the repository (the SLM file, the project's Python, tools), failing loudly when it is missing;
//! `queries` reads the metric names the deployment artifacts query; `gpu` gives GPU tests a GPU or
//! skips them, loudly.
//!
//! ```ignore
//! mod common;
//! let slate = common::Slate::start("[limits]\nmax_body_bytes = 2048\n");
//! let resp = reqwest::get(slate.url("/health/ready")).await?;
//! let channel = slate.grpc_channel().await;
//! ```
#![allow(dead_code)] // each test binary uses a different subset

pub mod gpu;
pub mod queries;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_slate");

/// The default SLM, relative to the crate root (`scripts/fetch-models.sh` fetches it).
pub const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

// What tests need from outside the repository. A test never passes silently without its subject:
// whatever `scripts/test.sh` provides (model file, Python packages, tools) fails the test when missing,
// with the command that provides it.

/// `path` (relative to the crate root) as an absolute path; panics with `how` (the command that
/// provides it) when it does not exist.
pub fn require(path: &str, how: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    assert!(p.exists(), "{} is missing: {how}", p.display());
    p
}

/// The default SLM's GGUF file, or a panic that says how to fetch it.
pub fn smollm2() -> PathBuf {
    require(SMOLLM2, "run scripts/fetch-models.sh (scripts/test.sh does)")
}

/// The Python that tests run tools with (NumPy reference, manifest checker): `$SLATE_PYTHON`, else
/// the project's `.venv/bin/python3` (both made by `scripts/test.sh`); else a panic saying so.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLATE_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SLATE_PYTHON={} is not a file", p.display());
        return p;
    }
    require(
        ".venv/bin/python3",
        "the project's Python environment; run scripts/test.sh (it creates .venv/ with numpy, \
         kubernetes-validate and cloudcoil-models-prometheus-operator), or set SLATE_PYTHON",
    )
}

/// Trains the xgboost parity models into `dir` with `tools/tabular/xgboost_parity.py` (`rows`
/// held-out rows with xgboost's own predictions beside them), or panics saying why.
pub fn train_xgboost(dir: &Path, rows: usize) {
    train_parity("xgboost_parity.py", dir, rows)
}

/// Runs `tools/tabular/SCRIPT DIR ROWS`: models of a tree library and its own predictions on `rows`
/// held-out rows.
pub fn train_parity(script: &str, dir: &Path, rows: usize) {
    run_tool(script, &[dir.as_os_str(), rows.to_string().as_ref()], "xgboost and lightgbm")
}

/// Runs `tools/tabular/SCRIPT OUT_DIR` with the project's Python (a trainer that writes models and
/// their library's own predictions); panics with its stderr when it fails, naming `needs`.
pub fn run_trainer(script: &str, out_dir: &Path, needs: &str) {
    run_tool(script, &[out_dir.as_os_str()], needs)
}

fn run_tool(script: &str, args: &[&std::ffi::OsStr], needs: &str) {
    let out = Command::new(python())
        .arg(format!("tools/tabular/{script}"))
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "tools/tabular/{script} failed ({needs} are installed into .venv by scripts/test.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JSON file a trainer wrote.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Model `name`'s held-out rows in a trainer's `rows.json` (`{name: {"features": F, "rows": [[…]]}}`,
/// null = missing): the rows, their count and width. Asserts that more than one value per row on
/// average is missing, so the parity covers missing values.
pub fn parity_rows<'a>(rows: &'a serde_json::Value, name: &str) -> (&'a serde_json::Value, usize, usize) {
    let data = &rows[name]["rows"];
    let list = data.as_array().unwrap_or_else(|| panic!("rows.json has no rows for {name}"));
    let f = rows[name]["features"].as_u64().expect("features") as usize;
    let missing = list.iter().flat_map(|r| r.as_array().expect("a row")).filter(|v| v.is_null()).count();
    assert!(missing > list.len(), "{name}: the rows have missing values ({missing})");
    (data, list.len(), f)
}

/// The numbers of a JSON array.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// The largest error of `got` against `want`, absolute below 1 and relative above.
pub fn worst(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0, f64::max)
}

/// A tool from PATH, or a panic that says which Debian package has it (`scripts/test.sh` installs it).
pub fn tool(name: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found in PATH. It comes from Debian's `{package}` package; scripts/test.sh installs \
             it (apt-get download {package} && dpkg -x, no services started)"
        )
    })
}

/// Environment variables of ours that must not leak from the developer's shell into a test server.
const SCRUBBED_ENV: &[&str] = &[
    "SLATE_API_KEYS",
    "SLATE_CONFIG",
    "SLATE_HTTP_ADDR",
    "SLATE_GRPC_ADDR",
    "SLATE_LOG_FORMAT",
    "SLATE_LOG_LEVEL",
];

/// A running `slate serve` child process, killed on drop.
pub struct Slate {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Slate {
    /// Starts `slate serve` with `config_toml` (listeners forced to 127.0.0.1:0) and waits until both
    /// listeners are bound. Not until models are ready: see [`Slate::wait_ready`].
    pub fn start(config_toml: &str) -> Slate {
        Self::start_with(config_toml, &[])
    }

    /// Like [`Slate::start`], with extra environment variables for the child.
    pub fn start_with(config_toml: &str, env: &[(&str, &str)]) -> Slate {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("slate.toml");
        std::fs::write(&config, config_toml).expect("write config");
        let mut cmd = serve_command(&config);
        cmd.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn slate");

        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for (pipe, tx) in [(Box::new(stdout) as Box<dyn Read + Send>, Some(tx)), (Box::new(stderr), None)] {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("SLATE_TEST_ECHO").is_some() {
                        eprintln!("[slate] {line}");
                    }
                    logs.lock().unwrap().push_str(&format!("{line}\n"));
                    if let Some(tx) = &tx {
                        let _ = tx.send(line);
                    }
                }
            });
        }

        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut http, mut grpc) = (None, None);
        while http.is_none() || grpc.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    http = http.or_else(|| addr_after(&line, "http listening on "));
                    grpc = grpc.or_else(|| addr_after(&line, "grpc listening on "));
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "slate did not report its listeners (exit: {status:?}); output:\n{}",
                        logs.lock().unwrap()
                    );
                }
            }
        }
        Slate { child, http: http.expect("checked"), grpc: grpc.expect("checked"), logs, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// POSTs `body` as JSON to `path`: the status and the response parsed as JSON (a body that is not
    /// JSON comes back as a JSON string).
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new().post(self.url(path)).json(body).send().await.expect("POST");
        let status = r.status().as_u16();
        let text = r.text().await.expect("response body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// POSTs an Open Inference Protocol request for `outputs` of `model` on `rows` (`[n, f]` FP32,
    /// null = missing), asserts 200, and returns each output asked for as (values, shape), in order.
    pub async fn infer_outputs(
        &self,
        model: &str,
        rows: &serde_json::Value,
        (n, f): (usize, usize),
        outputs: &[&str],
    ) -> Vec<(Vec<f64>, serde_json::Value)> {
        let asked: Vec<serde_json::Value> = outputs.iter().map(|o| serde_json::json!({"name": o})).collect();
        let body = serde_json::json!({
            "inputs": [{"name": "input", "shape": [n, f], "datatype": "FP32", "data": rows}],
            "outputs": asked,
        });
        let (status, resp) = self.post_json(&format!("/v2/models/{model}/infer"), &body).await;
        assert_eq!(status, 200, "{model}: {resp}");
        outputs
            .iter()
            .map(|key| {
                let all =
                    resp["outputs"].as_array().unwrap_or_else(|| panic!("{model}: no outputs in {resp}"));
                let out =
                    all.iter().find(|o| o["name"] == *key).unwrap_or_else(|| panic!("{model}: no {key}"));
                (floats(&out["data"]), out["shape"].clone())
            })
            .collect()
    }

    /// GETs `path`: the status and the body parsed as JSON (`null` when it is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::get(self.url(path)).await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls `GET /v1/models` until no model is still loading (each ready or failed); returns the
    /// last list. Panics (with the logs) after `timeout`.
    pub async fn wait_settled(&self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, list) = self.get_json("/v1/models").await;
            let loading =
                list["data"].as_array().is_none_or(|ms| ms.iter().any(|m| m["status"] == "loading"));
            if !loading {
                return list;
            }
            if Instant::now() > deadline {
                panic!("models still loading after {timeout:?}: {list}; output:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub async fn grpc_channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(self.grpc_url())
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to gRPC")
    }

    /// Everything the server printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_some()
    }

    /// Waits for the process to exit; panics (with the logs) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("slate did not exit within {timeout:?}; output:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `GET /health/ready` until 200; panics (with the logs) after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = reqwest::get(self.url("/health/ready")).await {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("slate not ready within {timeout:?}; output:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Slate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `slate serve --config <temp config>` to completion (for configs that must fail at start).
pub fn run_to_exit(config_toml: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("slate.toml");
    std::fs::write(&config, config_toml).expect("write config");
    let mut child = serve_command(&config)
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slate");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("slate kept running with config:\n{config_toml}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// Test-side variables for a test executable run away from its build (scripts/device-check.sh's
/// folder on a GPU machine): the `slate` binary to start instead of cargo's, and the folder that
/// relative model paths resolve against instead of the crate root.
const TEST_BIN: &str = "SLATE_TEST_BIN";
const TEST_ROOT: &str = "SLATE_TEST_ROOT";

fn serve_command(config: &std::path::Path) -> Command {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty());
    let mut cmd = Command::new(var(TEST_BIN).unwrap_or_else(|| BIN.into()));
    cmd.arg("serve").arg("--config").arg(config);
    // Relative model paths in configs resolve against the crate root, like `cargo run`.
    cmd.current_dir(var(TEST_ROOT).unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()));
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    // The listener lines are INFO; a developer's RUST_LOG must not hide them.
    cmd.env("RUST_LOG", "info");
    cmd
}

/// The socket address printed after `marker` in a log line (text or JSON format).
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest.find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c))).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// An HTTP/1.1 request whose body is sent in two parts, so it stays in flight as long as the test
/// wants (a legitimately slow client). Sent with `Connection: close`.
pub struct SlowRequest {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowRequest {
    /// Connects, sends the headers and the first `upfront` bytes of `body`, and returns.
    pub fn start(
        addr: SocketAddr,
        path: &str,
        extra_headers: &str,
        body: &str,
        upfront: usize,
    ) -> SlowRequest {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra_headers}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send headers");
        stream.write_all(&body.as_bytes()[..upfront]).expect("send first part");
        stream.flush().expect("flush");
        SlowRequest { stream, rest: body.as_bytes()[upfront..].to_vec() }
    }

    /// Sends the rest of the body and reads the whole response: (status, headers, body).
    pub fn finish(mut self) -> (u16, String, String) {
        self.stream.write_all(&self.rest).expect("send the rest of the body");
        let mut raw = Vec::new();
        self.stream.read_to_end(&mut raw).expect("read response");
        parse_response(&raw)
    }

    /// Reads the response without sending anything more (for requests the server answers early).
    pub fn read_response(mut self) -> (u16, String, String) {
        let mut raw = Vec::new();
        let _ = self.stream.read_to_end(&mut raw);
        parse_response(&raw)
    }
}

fn parse_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Writes a small random ranker (config.json + model.safetensors) to `dir` and returns its config.
pub fn random_ranker(dir: &std::path::Path, seed: u64) -> slate::ranking::RankerConfig {
    let cfg = slate_tools::testkit::small_config(slate::ranking::Fusion::AppendCross, seed);
    slate::ranking::RankerModel::random(&cfg, seed).save(dir).expect("save the random ranker");
    cfg
}

/// A `[[models]]` table serving the ranker in `dir` as `name`.
pub fn ranker_toml(name: &str, dir: &std::path::Path) -> String {
    format!("[[models]]\nname = \"{name}\"\nkind = \"ranker\"\npath = \"{}\"\n", dir.display())
}

/// A valid request for a ranker with config `cfg`, served as `model`.
pub fn ranker_request(
    cfg: &slate::ranking::RankerConfig,
    model: &str,
    candidates: usize,
) -> slate::ranking::RankRequest {
    let mut req = slate_tools::testkit::random_request(cfg, 5, cfg.max_history / 2, candidates);
    req.model = model.into();
    req
}

/// A request body that parses, for a model name of the caller's choice.
pub fn rank_body(model: &str) -> String {
    format!(r#"{{"model":"{model}","member_id":7,"candidates":[{{"item_id":1}},{{"item_id":2}}]}}"#)
}

/// Whether a new TCP connection to `addr` is refused (the listener is closed).
pub fn connection_refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}
