//! `slate-tools compress` (also `slate compress`): a GGUF model, dequantized to f32, re-encoded into a
//! compressed model folder (`docs/compressed-format.md`): dense int8/int4/f16, pruning to N:M or
//! unstructured sparsity by magnitude or, from calibration text (`calib`'s sequential protocol), by
//! Wanda, SparseGPT or ALPS ([`solve`]), a low-rank correction `U·V` (the residual's truncated SVD, or
//! HASSLE-free's alternation with the sparse part), FFSplit heavy hitters.

mod calib;
mod encode;
mod lowrank;
pub mod solve;

#[cfg(test)]
mod tests;

use anyhow::{bail, Context};
use clap::Args;
use encode::{Dense, Keep};
use slate::kernels::cpu::compressed::{CMatrix, Tile, ValueType};
use slate::kernels::cpu::quant::QMatrix;
use slate::slm::compressed::{self, expected_matrices, expected_vectors, Source};
use slate::slm::gguf::GgufFile;
use slate::slm::model::LlamaConfig;
use solve::Method;
use std::collections::HashMap;
use std::path::PathBuf;

/// The per-layer report of a calibrated run, in the written folder.
pub const REPORT_FILE: &str = "report.json";

/// Options of `compress`.
#[derive(Debug, Clone, Args)]
pub struct CompressArgs {
    /// The source GGUF model (llama family).
    #[arg(long)]
    pub model: PathBuf,
    /// `none` (every weight kept, re-encoded), `magnitude` (prune by |w| per row), or a calibrated
    /// method (needs `--calib`): `wanda` (|w|·‖x‖), `sparsegpt` (OBS updates), `alps` (ADMM + PCG),
    /// `hassle-free` (S + U·V by alternating ALPS and a low-rank step on the output error; needs
    /// `--rank`).
    #[arg(long)]
    pub method: String,
    /// N:M semi-structured pruning, e.g. `2:4` or `4:8`.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Unstructured pruning: the fraction of each row dropped, in (0, 1).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Calibration text (e.g. data/text/calib.txt): layers are compressed, in order, from the inputs
    /// they see on it (docs/COMPRESSION.md, "the sequential protocol"); a per-layer report is written
    /// into the folder as `report.json`. Needed by the calibrated methods; with `magnitude`, only the
    /// report is added.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration sequences, taken from disjoint windows of the text.
    #[arg(long, default_value_t = 128)]
    pub calib_seqs: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512)]
    pub calib_len: usize,
    /// Seed of the choice of calibration windows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Rank of the low-rank correction U·V (0: none): fitted to the residual W − S by truncated SVD,
    /// or, with `hassle-free`, alternated with S on the layer's output error.
    #[arg(long, default_value_t = 0)]
    pub rank: usize,
    /// `hassle-free`: alternations of the sparse and the low-rank step.
    #[arg(long, default_value_t = solve::OUTER_ITERS)]
    pub outer_iters: usize,
    /// FFSplit: this fraction of each FFN layer's neurons kept dense int8, the rest compressed.
    #[arg(long)]
    pub ffsplit_heavy: Option<f64>,
    /// Value type of the kept weights: int8, int4 or f16.
    #[arg(long, default_value = "int8")]
    pub values: String,
    /// Value type of U and V: int8 or f16.
    #[arg(long, default_value = "int8")]
    pub factor_values: String,
    /// Matrices kept dense (every weight, in `--values`, no low-rank part, no FFSplit): those whose
    /// GGUF tensor name contains one of these comma-separated parts, e.g. `token_embd,output.weight`
    /// for the embedding and output head, `attn_` for attention.
    #[arg(long, value_delimiter = ',')]
    pub keep_dense: Vec<String>,
    /// The folder to write (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

#[cfg(test)]
impl CompressArgs {
    /// The options of `compress --model m.gguf --out out` plus `extra`.
    fn parse_from_for_tests(extra: &[&str]) -> CompressArgs {
        use clap::Parser as _;
        let mut args = vec!["slate-tools", "compress", "--model", "m.gguf", "--out", "out"];
        args.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(args).command {
            crate::cli::Command::Compress(a) => a,
            _ => unreachable!("the compress command"),
        }
    }
}

/// Checked options.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub keep: Keep,
    /// How the kept entries are chosen (and updated).
    pub method: Method,
    pub values: ValueType,
    pub rank: usize,
    /// `hassle-free`'s alternations.
    pub outer_iters: usize,
    pub factor_values: ValueType,
    pub heavy: Option<f64>,
    /// Name parts of the matrices kept dense.
    pub keep_dense: Vec<String>,
}

impl Plan {
    /// Whether matrix `name` is kept dense (`--keep-dense`).
    pub fn dense(&self, name: &str) -> bool {
        self.keep_dense.iter().any(|p| name.contains(p.as_str()))
    }
}

impl CompressArgs {
    /// Checks every option that needs no file.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let method = match self.method.as_str() {
            "none" => None,
            m => Some(Method::parse(m).with_context(|| {
                format!("unknown --method {m:?} (none, magnitude, wanda, sparsegpt, alps, hassle-free)")
            })?),
        };
        let keep = match (method, &self.pattern, self.sparsity) {
            (None, None, None) => Keep::All,
            (None, ..) => {
                bail!("--method none keeps every weight: --pattern and --sparsity need a pruning method")
            }
            (Some(_), Some(_), Some(_)) => bail!("give either --pattern or --sparsity, not both"),
            (Some(_), None, None) => bail!("--method {} needs --pattern N:M or --sparsity S", self.method),
            (Some(_), Some(p), None) => parse_pattern(p)?,
            (Some(_), None, Some(s)) => {
                if !(s > 0.0 && s < 1.0) {
                    bail!("--sparsity {s} must be between 0 and 1 (exclusive)");
                }
                Keep::Sparsity(s)
            }
        };
        let method = method.unwrap_or(Method::Magnitude);
        if method.calibrated() && self.calib.is_none() {
            bail!("--method {} needs calibration text: --calib FILE (e.g. data/text/calib.txt)", self.method);
        }
        if method == Method::HassleFree && self.rank == 0 {
            bail!("--method hassle-free fits S + U·V: it needs --rank R (without a low-rank part, use alps)");
        }
        if method == Method::HassleFree && self.outer_iters == 0 {
            bail!("--outer-iters must be at least 1");
        }
        let values = ValueType::parse(&self.values)
            .with_context(|| format!("unknown --values {:?} (int8, int4, f16)", self.values))?;
        let factor_values = match ValueType::parse(&self.factor_values) {
            Some(v @ (ValueType::I8 | ValueType::F16)) => v,
            _ => bail!("unknown --factor-values {:?} (int8, f16)", self.factor_values),
        };
        if let Some(h) = self.ffsplit_heavy {
            if !(h > 0.0 && h < 1.0) {
                bail!("--ffsplit-heavy {h} must be between 0 and 1 (exclusive)");
            }
        }
        if let Some(p) = self.keep_dense.iter().find(|p| p.trim().is_empty() || p.trim() != p.as_str()) {
            bail!("--keep-dense: {p:?} is not a tensor name part (empty or padded with spaces)");
        }
        Ok(Plan {
            keep,
            method,
            values,
            rank: self.rank,
            outer_iters: self.outer_iters,
            factor_values,
            heavy: self.ffsplit_heavy,
            keep_dense: self.keep_dense.clone(),
        })
    }
}

fn parse_pattern(p: &str) -> anyhow::Result<Keep> {
    let bad =
        || anyhow::anyhow!("--pattern {p:?} must be N:M with 0 < N < M and M dividing 64 (e.g. 2:4, 4:8)");
    let (n, m) = p.split_once(':').ok_or_else(bad)?;
    let (n, m): (usize, usize) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
    if n == 0 || n >= m || m > 64 || 64 % m != 0 {
        return Err(bad());
    }
    Ok(Keep::NM { n, m })
}

/// Runs the command.
pub fn run(args: &CompressArgs) -> anyhow::Result<()> {
    let plan = args.plan()?;
    if args.out.exists() {
        bail!("--out {} already exists", args.out.display());
    }
    let file = GgufFile::open(&args.model).map_err(anyhow::Error::msg)?;
    let config = LlamaConfig::from_gguf(&file).map_err(anyhow::Error::msg)?;
    let shapes: Vec<(String, usize, usize)> = expected_matrices(&config)
        .into_iter()
        .filter(|(name, ..)| file.has_tensor(name))
        .map(|(name, rows, cols, _)| (name, rows, cols))
        .collect();
    if let Some(p) =
        plan.keep_dense.iter().find(|p| !shapes.iter().any(|(name, ..)| name.contains(p.as_str())))
    {
        bail!("--keep-dense {p:?} matches no matrix of {}", args.model.display());
    }
    if plan.heavy.is_some() && shapes.iter().any(|(name, ..)| name.contains(".ffn_") && plan.dense(name)) {
        bail!("--keep-dense matches FFN matrices, which --ffsplit-heavy splits");
    }
    if let Some((name, rows, cols)) =
        shapes.iter().find(|(name, r, c)| !plan.dense(name) && plan.rank > (*r).min(*c))
    {
        bail!("--rank {} is larger than {name} ({rows}×{cols}) allows", plan.rank);
    }
    let mut source_bytes = 0usize;
    for (name, ..) in &shapes {
        source_bytes += file.tensor(name).map_err(anyhow::Error::msg)?.2.len();
    }
    let bar = indicatif::ProgressBar::new(shapes.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} layers {elapsed_precise} {msg}")
            .expect("a valid progress template"),
    );
    let (matrices, report) = match &args.calib {
        Some(text) => {
            let tokens = calibration_tokens(args, text)?;
            let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads.max(1)).build()?;
            let c = pool.install(|| {
                calib::compress(&file, &config, &plan, &tokens, args.calib_len, |name| {
                    bar.set_message(name.to_string());
                    bar.inc(1);
                })
            })?;
            (c.matrices, Some(c.report))
        }
        None => (plain(&file, &config, &plan, &shapes, &bar)?, None),
    };
    bar.finish_and_clear();
    let mut vectors = HashMap::new();
    for (name, len, _) in expected_vectors(&config) {
        if file.has_tensor(&name) {
            vectors.insert(name.clone(), dense(&file, &name, 1, len)?);
        }
    }
    let tokenizer: HashMap<_, _> = file
        .metadata()
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let report = match &report {
        Some(r) => {
            print_report(r);
            Some(serde_json::to_string_pretty(r)? + "\n")
        }
        None => None,
    };
    let source = Source {
        name: args.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        sha256: file.content_hash(),
        method: describe(args),
    };
    let extra: Vec<(&str, &[u8])> = report.iter().map(|r| (REPORT_FILE, r.as_bytes())).collect();
    compressed::write_with(&args.out, &config, &tokenizer, &matrices, &vectors, &source, &extra)
        .map_err(anyhow::Error::msg)?;
    summary(&matrices, source_bytes, &args.out);
    Ok(())
}

/// Every matrix of `shapes` compressed without calibration.
fn plain(
    file: &GgufFile,
    config: &LlamaConfig,
    plan: &Plan,
    shapes: &[(String, usize, usize)],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<HashMap<String, CMatrix>> {
    let mut matrices = HashMap::new();
    for (name, rows, cols) in shapes {
        if plan.heavy.is_some() && name.contains(".ffn_") {
            if name.ends_with("ffn_gate.weight") {
                bar.set_message(name.replace("ffn_gate", "ffn_*"));
                let layer = name.trim_end_matches("ffn_gate.weight");
                matrices.extend(ffsplit_layer(file, layer, config, plan)?);
            }
        } else if plan.dense(name) {
            bar.set_message(name.clone());
            let w = dense(file, name, *rows, *cols)?;
            let d = Dense { w: &w, cols: *cols };
            let tiles = encode::tiles(&d, 0..*rows, 0..*cols, Keep::All, plan.values);
            matrices.insert(name.clone(), finish(name, &d, *rows, tiles, &Plan { rank: 0, ..plan.clone() })?);
        } else {
            bar.set_message(name.clone());
            let w = dense(file, name, *rows, *cols)?;
            let d = Dense { w: &w, cols: *cols };
            let tiles = encode::tiles(&d, 0..*rows, 0..*cols, plan.keep, plan.values);
            matrices.insert(name.clone(), finish(name, &d, *rows, tiles, plan)?);
        }
        bar.inc(1);
    }
    Ok(matrices)
}

/// The calibration sequences (`--calib-seqs × --calib-len` tokens) of `--calib`.
fn calibration_tokens(args: &CompressArgs, text: &std::path::Path) -> anyhow::Result<Vec<u32>> {
    let s = std::fs::read_to_string(text).with_context(|| format!("--calib {}", text.display()))?;
    let slate::slm::Opened { tokenizer, .. } = slate::slm::open(&args.model).map_err(anyhow::Error::msg)?;
    let ids = tokenizer.encode(&s, false).map_err(|e| anyhow::anyhow!("--calib {}: {e}", text.display()))?;
    calib::sequences(&ids, args.calib_seqs, args.calib_len, args.seed)
        .with_context(|| format!("--calib {}", text.display()))
}

/// The report's summary on stdout: mean and worst relative layer error.
fn print_report(r: &[calib::LayerReport]) {
    let n = r.len().max(1) as f64;
    let mean = r.iter().map(|l| l.relative_error).sum::<f64>() / n;
    if let Some(worst) = r.iter().max_by(|a, b| a.relative_error.total_cmp(&b.relative_error)) {
        println!(
            "layer error ‖(W − Ŵ)X‖²/‖WX‖² on the calibration inputs: mean {mean:.4}, worst {:.4} ({})",
            worst.relative_error, worst.name
        );
    }
}

/// The arguments that shaped the folder, for `compression.json`.
fn describe(a: &CompressArgs) -> String {
    let mut s = format!("{} values={}", a.method, a.values);
    if let Some(p) = &a.pattern {
        s += &format!(" pattern={p}");
    }
    if let Some(x) = a.sparsity {
        s += &format!(" sparsity={x}");
    }
    if a.rank > 0 {
        s += &format!(" rank={} factor_values={}", a.rank, a.factor_values);
    }
    if a.method == "hassle-free" {
        s += &format!(" outer_iters={}", a.outer_iters);
    }
    if let Some(h) = a.ffsplit_heavy {
        s += &format!(" ffsplit_heavy={h}");
    }
    if !a.keep_dense.is_empty() {
        s += &format!(" keep_dense={}", a.keep_dense.join(","));
    }
    if let Some(c) = &a.calib {
        s += &format!(
            " calib={} calib_seqs={} calib_len={} seed={}",
            c.display(),
            a.calib_seqs,
            a.calib_len,
            a.seed
        );
    }
    s
}

fn summary(matrices: &HashMap<String, CMatrix>, source_bytes: usize, out: &std::path::Path) {
    let after: usize = matrices.values().map(CMatrix::bytes).sum();
    let kept: usize = matrices.values().map(CMatrix::s_kept).sum();
    let all: usize = matrices.values().map(|m| m.rows() * m.cols()).sum();
    println!(
        "{}: {} matrices, {source_bytes} bytes in the GGUF → {after} bytes ({:.3}×), S density {:.3}",
        out.display(),
        matrices.len(),
        after as f64 / source_bytes.max(1) as f64,
        kept as f64 / all.max(1) as f64
    );
}

/// Tensor `name` dequantized to f32 (`rows × cols`, row-major).
pub(crate) fn dense(file: &GgufFile, name: &str, rows: usize, cols: usize) -> anyhow::Result<Vec<f32>> {
    let (ty, dims, bytes) = file.tensor(name).map_err(anyhow::Error::msg)?;
    let want: &[usize] = if rows == 1 { &[cols] } else { &[rows, cols] };
    if dims != want {
        bail!("{name} has shape {dims:?}, the config needs {want:?}");
    }
    let q = QMatrix::from_raw(ty, rows, cols, bytes).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let mut w = vec![0f32; rows * cols];
    for (r, row) in w.chunks_exact_mut(cols).enumerate() {
        q.dequantize_row(r, row);
    }
    Ok(w)
}

/// S's tiles plus, for a positive rank, `U·V` fitted to the residual `W − S`.
fn finish(name: &str, d: &Dense, rows: usize, tiles: Vec<Tile>, plan: &Plan) -> anyhow::Result<CMatrix> {
    let cols = d.cols;
    let r = plan.rank;
    if r == 0 {
        return CMatrix::new(rows, cols, None, tiles).map_err(|e| anyhow::anyhow!("{name}: {e}"));
    }
    let s =
        CMatrix::new(rows, cols, None, tiles.clone()).map_err(|e| anyhow::anyhow!("{name}: {e}"))?.to_dense();
    let e: Vec<f64> = d.w.iter().zip(&s).map(|(&w, &s)| w as f64 - s as f64).collect();
    let (u, v) = lowrank::truncated_svd(&e, rows, cols, r);
    let (u, v): (Vec<f32>, Vec<f32>) =
        (u.iter().map(|&x| x as f32).collect(), v.iter().map(|&x| x as f32).collect());
    with_factors(name, rows, cols, tiles, &u, &v, plan)
}

/// The matrix of S's `tiles` plus `U·V` (`U` `rows × r`, `V` `r × cols`, row-major, `r = plan.rank`),
/// the factors encoded in `plan.factor_values`.
fn with_factors(
    name: &str,
    rows: usize,
    cols: usize,
    mut tiles: Vec<Tile>,
    u: &[f32],
    v: &[f32],
    plan: &Plan,
) -> anyhow::Result<CMatrix> {
    let r = plan.rank;
    let u_tiles = encode::tiles(&Dense { w: u, cols: r }, 0..rows, 0..r, Keep::All, plan.factor_values);
    // U's columns sit right of S's in the `[S | U]` area.
    for t in u_tiles {
        let ((row0, nr), (_, nc)) = (t.rows(), t.cols());
        let rebased = Tile::new((row0, nr), (cols, nc), t.pattern(), t.mask().to_vec(), t.values().clone())
            .map_err(|e| anyhow::anyhow!("{name}: U: {e}"))?;
        tiles.push(rebased);
    }
    let v_tiles = encode::tiles(&Dense { w: v, cols }, 0..r, 0..cols, Keep::All, plan.factor_values);
    let v = CMatrix::new(r, cols, None, v_tiles).map_err(|e| anyhow::anyhow!("{name}: V: {e}"))?;
    CMatrix::new(rows, cols, Some(v), tiles).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

/// FFSplit's neuron order from per-neuron scores: the heaviest `fraction` (rounded to a multiple of
/// 16, so down's column split stays on the kernels' grid for the fused decode path) first, heaviest
/// first, then the rest in their original order. Returns the order and the heavy count.
fn heavy_order(score: &[f64], fraction: f64) -> (Vec<usize>, usize) {
    let f = score.len();
    let mut perm: Vec<usize> = (0..f).collect();
    perm.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let h = (((fraction * f as f64) / 16.0).round() as usize * 16).min(f);
    perm[h..].sort_unstable();
    (perm, h)
}

/// One FFN layer with FFSplit: neurons ordered by `‖gate_j‖·‖up_j‖·‖down[:, j]‖` (heaviest first; the
/// permutation of gate/up rows and down columns leaves the layer's function unchanged), the first
/// `heavy · ffn` (rounded to a multiple of 16) kept dense int8, the rest encoded as the plan says.
fn ffsplit_layer(
    file: &GgufFile,
    layer: &str,
    c: &LlamaConfig,
    plan: &Plan,
) -> anyhow::Result<Vec<(String, CMatrix)>> {
    let (d, f) = (c.d_model, c.ffn);
    let [gate_n, up_n, down_n] = ["ffn_gate", "ffn_up", "ffn_down"].map(|t| format!("{layer}{t}.weight"));
    let (gate, up, down) =
        (dense(file, &gate_n, f, d)?, dense(file, &up_n, f, d)?, dense(file, &down_n, d, f)?);
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let score: Vec<f64> = (0..f)
        .map(|j| {
            norm(&mut gate[j * d..(j + 1) * d].iter().copied())
                * norm(&mut up[j * d..(j + 1) * d].iter().copied())
                * norm(&mut (0..d).map(|i| down[i * f + j]))
        })
        .collect();
    let (perm, h) = heavy_order(&score, plan.heavy.unwrap_or(0.0));
    let rows_of =
        |w: &[f32]| perm.iter().flat_map(|&j| w[j * d..(j + 1) * d].iter().copied()).collect::<Vec<_>>();
    let (gate, up) = (rows_of(&gate), rows_of(&up));
    let down: Vec<f32> =
        (0..d).flat_map(|i| perm.iter().map(move |&j| (i, j))).map(|(i, j)| down[i * f + j]).collect();
    let mut out = Vec::new();
    for (name, w) in [(gate_n, gate), (up_n, up)] {
        let dm = Dense { w: &w, cols: d };
        let mut tiles = encode::tiles(&dm, 0..h, 0..d, Keep::All, ValueType::I8);
        tiles.extend(encode::tiles(&dm, h..f, 0..d, plan.keep, plan.values));
        out.push((name.clone(), finish(&name, &dm, f, tiles, plan)?));
    }
    let dm = Dense { w: &down, cols: f };
    let mut tiles = encode::tiles(&dm, 0..d, 0..h, Keep::All, ValueType::I8);
    tiles.extend(encode::tiles(&dm, 0..d, h..f, plan.keep, plan.values));
    out.push((down_n.clone(), finish(&down_n, &dm, d, tiles, plan)?));
    Ok(out)
}
