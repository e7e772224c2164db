//! Hostile model files served end to end: one config names a good SLM (SmolLM2), a good ranker
//! (models/demo-ranker) and a table of hostile files derived from them — GGUF metadata patched in
//! place (absurd `block_count` and `context_length`, zero and non-power-of-two `general.alignment`, a
//! 2^40-element array, a tensor offset past the end, a truncated file, a chat template that never
//! ends) and ranker folders with an absurd `config.json` (`d_model`, `micro_batch`, `item_buckets`) or
//! a truncated `model.safetensors`. The server must start, stay alive, list every hostile model as
//! `failed` with an error naming the file and the field or tensor, and serve the good ones.
//!
//! Files whose check fires before any tensor byte is read keep the real header and are zero-filled
//! (sparse) to the real length, so the table costs a few megabytes of disk, not a copy per case.

mod common;

use common::Slate;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where things are in a GGUF header: each metadata key's value, and each tensor's offset field.
struct Layout {
    /// key → (position of the key's length prefix, position of its value).
    keys: Vec<(String, usize, usize)>,
    /// tensor name → position of its u64 offset.
    offsets: Vec<(String, usize)>,
    /// End of the header (where tensor data starts, before alignment).
    end: usize,
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().unwrap())
}

fn string_at(b: &[u8], p: usize) -> (String, usize) {
    let n = u64_at(b, p) as usize;
    (String::from_utf8_lossy(&b[p + 8..p + 8 + n]).into_owned(), p + 8 + n)
}

/// Skips a GGUF v3 value of type `ty` at `p`.
fn skip(b: &[u8], ty: u32, p: usize) -> usize {
    match ty {
        0 | 1 | 7 => p + 1,
        2 | 3 => p + 2,
        4..=6 => p + 4,
        10..=12 => p + 8,
        8 => string_at(b, p).1,
        9 => {
            let (elem, n) = (u32_at(b, p), u64_at(b, p + 4));
            (0..n).fold(p + 12, |q, _| skip(b, elem, q))
        }
        t => panic!("unknown GGUF value type {t}"),
    }
}

fn layout(b: &[u8]) -> Layout {
    assert_eq!((&b[..4], u32_at(b, 4)), (&b"GGUF"[..], 3), "a GGUF v3 file");
    let (n_tensors, n_kv) = (u64_at(b, 8), u64_at(b, 16));
    let mut p = 24;
    let mut keys = Vec::new();
    for _ in 0..n_kv {
        let at = p;
        let (key, q) = string_at(b, p);
        let ty = u32_at(b, q);
        keys.push((key, at, q + 4));
        p = skip(b, ty, q + 4);
    }
    let mut offsets = Vec::new();
    for _ in 0..n_tensors {
        let (name, q) = string_at(b, p);
        let n_dims = u32_at(b, q) as usize;
        let off = q + 4 + 8 * n_dims + 4;
        offsets.push((name, off));
        p = off + 8;
    }
    Layout { keys, offsets, end: p }
}

impl Layout {
    fn value(&self, key: &str) -> usize {
        self.keys.iter().find(|k| k.0 == key).unwrap_or_else(|| panic!("no key {key}")).2
    }
    fn key(&self, key: &str) -> usize {
        self.keys.iter().find(|k| k.0 == key).unwrap_or_else(|| panic!("no key {key}")).1
    }
    fn offset(&self, tensor: &str) -> usize {
        self.offsets.iter().find(|t| t.0 == tensor).unwrap_or_else(|| panic!("no tensor {tensor}")).1
    }
}

/// How much of the patched file is real: the header only (zero-filled to `len`), or everything.
enum Keep {
    Header { len: u64 },
    All,
}

/// Writes `bytes` patched by `patch` to `path`, keeping what `keep` says.
fn write_gguf(path: &Path, bytes: &[u8], l: &Layout, keep: Keep, patch: impl FnOnce(&mut Vec<u8>)) {
    let mut b = match keep {
        Keep::Header { .. } => bytes[..l.end].to_vec(),
        Keep::All => bytes.to_vec(),
    };
    patch(&mut b);
    std::fs::write(path, &b).expect("write a hostile GGUF");
    if let Keep::Header { len } = keep {
        let f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
        f.set_len(len).expect("extend sparsely");
    }
}

/// The hostile GGUFs: (model name, file, what the error must contain).
fn hostile_ggufs(dir: &Path) -> Vec<(String, PathBuf, Vec<String>)> {
    let bytes = std::fs::read(common::smollm2()).expect("read SmolLM2");
    let l = layout(&bytes);
    let full = bytes.len() as u64;
    let mut out = Vec::new();
    let mut case = |name: &str, keep: Keep, patch: &dyn Fn(&mut Vec<u8>), want: &[&str]| {
        let path = dir.join(format!("{name}.gguf"));
        write_gguf(&path, &bytes, &l, keep, patch);
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.push(format!("{name}.gguf"));
        out.push((name.to_string(), path, want));
    };
    let set_u32 = |at: usize, v: u32| move |b: &mut Vec<u8>| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    case(
        "block-count",
        Keep::Header { len: full },
        &set_u32(l.value("llama.block_count"), 4_000_000_000),
        &["llama.block_count = 4000000000 but 30 blk.* layers are present"],
    );
    case(
        "context-length",
        Keep::Header { len: full },
        &set_u32(l.value("llama.context_length"), 4_000_000_000),
        &["llama.context_length = 4000000000 must be in 1..=1048576"],
    );
    // general.file_type (u32, as long as "general.alignment") renamed to general.alignment.
    let (file_type, file_type_value) = (l.key("general.file_type"), l.value("general.file_type"));
    for (name, a, want) in [
        ("alignment-zero", 0u32, "general.alignment = 0 must be a nonzero power of two"),
        ("alignment-48", 48, "general.alignment = 48 must be a nonzero power of two"),
    ] {
        let patch = move |b: &mut Vec<u8>| {
            b[file_type + 8..file_type + 8 + 17].copy_from_slice(b"general.alignment");
            b[file_type_value..file_type_value + 4].copy_from_slice(&a.to_le_bytes());
        };
        case(name, Keep::Header { len: full }, &patch, &[want]);
    }
    let merges_len = l.value("tokenizer.ggml.merges") + 4;
    case(
        "huge-array",
        Keep::Header { len: full },
        &move |b: &mut Vec<u8>| b[merges_len..merges_len + 8].copy_from_slice(&(1u64 << 40).to_le_bytes()),
        &["tokenizer.ggml.merges (array of 1099511627776)"],
    );
    case(
        "truncated",
        Keep::Header { len: full / 2 },
        &|_: &mut Vec<u8>| {},
        &["lies past the end of the file"],
    );
    let off = l.offset("output_norm.weight");
    case(
        "offset-past-end",
        Keep::Header { len: full },
        &move |b: &mut Vec<u8>| b[off..off + 8].copy_from_slice(&(1u64 << 40).to_le_bytes()),
        &["tensor output_norm.weight: offset 1099511627776 lies past the end of the file"],
    );
    // The chat template replaced by one of the same length that never ends.
    let t = l.value("tokenizer.chat_template");
    let n = u64_at(&bytes, t) as usize;
    let hostile = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    assert!(hostile.len() <= n);
    let template = format!("{hostile:<n$}");
    case(
        "chat-template",
        Keep::All,
        &move |b: &mut Vec<u8>| b[t + 8..t + 8 + n].copy_from_slice(template.as_bytes()),
        &["tokenizer.chat_template", "out of fuel"],
    );
    out
}

/// The hostile ranker folders: (model name, folder, what the error must contain).
fn hostile_rankers(dir: &Path) -> Vec<(String, PathBuf, Vec<String>)> {
    let demo = common::require("models/demo-ranker", "the demo ranker is part of the repository");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("config.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (name, key, v) in [
        ("ranker-d", "d_model", json!(1u64 << 40)),
        ("ranker-micro-batch", "micro_batch", json!(1_000_000_000_000u64)),
        ("ranker-buckets", "item_buckets", json!(1u64 << 40)),
    ] {
        let folder = dir.join(name);
        std::fs::create_dir(&folder).unwrap();
        let mut c = config.clone();
        c[key] = v.clone();
        std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
        std::fs::copy(demo.join("model.safetensors"), folder.join("model.safetensors")).unwrap();
        let want = vec![format!("{}: config.json: {key}: {v} is more than the", folder.display())];
        out.push((name.to_string(), folder, want));
    }
    let folder = dir.join("ranker-truncated");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(demo.join("config.json"), folder.join("config.json")).unwrap();
    let st = std::fs::read(demo.join("model.safetensors")).unwrap();
    std::fs::write(folder.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    let want = vec![format!(
        "model.safetensors: {} bytes, but the tensors config.json prescribes need",
        st.len() / 2
    )];
    out.push(("ranker-truncated".to_string(), folder, want));
    out
}

async fn get(s: &Slate, path: &str) -> (u16, Value) {
    let r = reqwest::get(s.url(path)).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn model_toml(name: &str, kind: &str, path: &Path) -> String {
    format!("[[models]]\nname = \"{name}\"\nkind = \"{kind}\"\npath = \"{}\"\n", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_model_files_fail_alone_and_the_server_serves_the_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ggufs = hostile_ggufs(dir.path());
    let rankers = hostile_rankers(dir.path());
    let demo = common::require("models/demo-ranker", "the demo ranker is part of the repository");
    let mut config = model_toml("smol", "slm", &common::smollm2()) + &model_toml("demo", "ranker", &demo);
    for (name, path, _) in &ggufs {
        config += &model_toml(name, "slm", path);
    }
    for (name, path, _) in &rankers {
        config += &model_toml(name, "ranker", path);
    }
    let mut s = Slate::start(&config);

    // Wait until nothing is loading.
    let started = Instant::now();
    let models = loop {
        let (_, models) = get(&s, "/v1/models").await;
        let loading = models["data"].as_array().is_none_or(|d| d.iter().any(|m| m["status"] == "loading"));
        if !loading {
            break models;
        }
        assert!(!s.has_exited(), "the server died while loading:\n{}", s.logs());
        assert!(started.elapsed() < Duration::from_secs(240), "still loading: {models}\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("every model settled in {:.1?}", started.elapsed());
    let find = |name: &str| {
        models["data"].as_array().unwrap().iter().find(|m| m["id"] == name).cloned().unwrap_or_else(|| {
            panic!("{name} is not listed: {models}");
        })
    };
    for (name, _, want) in ggufs.iter().chain(&rankers) {
        let m = find(name);
        assert_eq!(m["status"], "failed", "{name}: {m}");
        let error = m["error"].as_str().unwrap_or_default();
        eprintln!("{name}: {error}");
        for w in want {
            assert!(error.contains(w.as_str()), "{name}: the error does not say {w:?}: {error}");
        }
    }
    for good in ["smol", "demo"] {
        assert_eq!(find(good)["status"], "ready", "{}", find(good));
    }
    assert!(!s.has_exited(), "the server exited:\n{}", s.logs());
    assert_eq!(get(&s, "/health/live").await.0, 200);

    // The good models serve.
    let chat = json!({"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0});
    let (status, r) = s.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"].as_u64().map(|n| n > 0), Some(true), "{r}");
    let rank: Value = serde_json::from_str(&common::rank_body("demo")).unwrap();
    let (status, r) = s.post_json("/v1/rank", &rank).await;
    assert_eq!(status, 200, "{r}");
    // A hostile model answers 503 naming itself, and the process is still there.
    let chat_bad = json!({"model": "chat-template", "messages": [{"role": "user", "content": "Hi"}]});
    let (status, r) = s.post_json("/v1/chat/completions", &chat_bad).await;
    assert_eq!(status, 503, "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("chat-template"), "{r}");
    assert!(!s.has_exited(), "the server exited:\n{}", s.logs());
}
