//! (b) + (d): the reference workload (or `--model`) in amortized mode, timed in A/B rounds against the
//! ONNX Runtime peer on the same weights and request, then per_candidate mode and concat fusion on the
//! same dims.

use super::flops::{dims, gflops, Dims, Flops};
use super::peer::{peer_missing, Peer, TempDir};
use super::stats::{fmt_load, median, percentile, time_runs, LoadMeter, Stats, QUIET_FOREIGN};
use super::{all_scores, compute_only, max_abs_diff, rank, BenchArgs, Plan};
use crate::testkit::{random_request, REQUEST_TIME_MS};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use slate::ranking::{Fusion, Prepared, RankRequest, RankerConfig, RankerModel};
use std::time::{Duration, Instant};

/// Section (b) + (d): prints its figures and adds them to `report` as `reference`; returns the
/// config measured (the sweep keeps its dims). `peak` is the GEMM peak (GFLOP/s) of section (a).
pub(super) fn section(args: &BenchArgs, plan: &Plan, peak: f64, report: &mut Value) -> Result<RankerConfig> {
    let w = Workload::new(args)?;
    w.print_header(args);
    let tmp = TempDir::new("ranker")?;
    let (peer, peer_note, peer_parity) = start_peer(args, &w, &tmp)?;
    let rounds = ab_rounds(args.quick, plan, &w, peer)?;
    let slow = slow_modes(args, plan, &w)?;
    let g = print_table(&w, &rounds, &slow, peak);
    let ratios = print_ort_ratios(&rounds, peer_note.as_deref());
    let quiet = print_quiet(plan, &w, &rounds);
    let (full, comp) = (&rounds.full, &rounds.comp);
    let (pc_ms, cc_ms) = (slow.pc.median_ms * slow.scale, slow.cc.median_ms * slow.scale);
    let (cfg, fl) = (&w.cfg, &w.flops);
    report["reference"] = json!({
        "model": args.model.as_ref().map(|p| p.display().to_string()),
        "history": w.l, "candidates": w.m, "d_model": cfg.d_model, "layers": cfg.layers, "heads": cfg.heads,
        "ffn_dim": cfg.ffn_dim, "head_dims": w.dims.head, "micro_batch": cfg.micro_batch,
        "gflop_nominal": fl.nominal / 1e9, "gflop_executed": fl.executed / 1e9,
        "gflop_per_candidate": fl.per_candidate / 1e9, "gflop_concat": fl.concat / 1e9,
        "rounds": rounds.per_round, "runs_per_block": plan.block,
        "amortized_rank": {"stats": full.json(), "gflops": g.full, "frac_peak": g.full / peak,
            "history_encode_ms": median(&rounds.hist_ms), "candidates_ms": median(&rounds.cand_ms)},
        "amortized_compute_only": {"stats": comp.json(), "gflops": g.comp, "frac_peak": g.comp / peak},
        "prepare": rounds.prep.json(),
        "onnxruntime": rounds.ort.as_ref().map(|o| json!({"stats": o.json(), "gflops": g.ort,
            "frac_peak": g.ort.map(|g| g / peak), "max_abs_diff_vs_slate": peer_parity})),
        "peer_note": peer_note,
        "quiet": quiet,
        "ratios": ratios,
        "per_candidate": {"candidates_run": slow.slow_m, "scaled_by": slow.scale, "median_ms_scaled": pc_ms,
            "p99_ms_scaled": slow.pc.p99_ms * slow.scale, "stats_unscaled": slow.pc.json(), "gflops": g.pc,
            "max_abs_diff_vs_amortized": slow.pc_parity},
        "concat": {"candidates_run": slow.slow_m, "scaled_by": slow.scale, "median_ms_scaled": cc_ms,
            "p99_ms_scaled": slow.cc.p99_ms * slow.scale, "stats_unscaled": slow.cc.json(), "gflops": g.cc},
        "amortized_over_per_candidate": full.median_ms / pc_ms,
        "amortized_over_concat": full.median_ms / cc_ms,
    });
    Ok(w.cfg)
}

/// The model and request of section (b) and what one request costs in FLOPs.
struct Workload {
    model: RankerModel,
    cfg: RankerConfig,
    /// History length (the config's max_history) and candidates per request.
    l: usize,
    m: usize,
    dims: Dims,
    flops: Flops,
    req: RankRequest,
    prepared: Prepared,
    /// `rank()`'s scores of `req`: what the peer and the slower modes are compared with.
    scores: Vec<Vec<f32>>,
}

impl Workload {
    /// The `--model` folder, or the reference workload with random weights from `--seed`.
    fn new(args: &BenchArgs) -> Result<Workload> {
        let model = match &args.model {
            Some(dir) => RankerModel::load(dir).map_err(|e| anyhow!("loading {}: {e}", dir.display()))?,
            None => RankerModel::random(&RankerConfig::reference_workload(), args.seed),
        };
        let cfg = model.config().clone();
        if !cfg.fusion.is_amortizable() {
            bail!("this bench measures amortized mode; the model's fusion is {}", cfg.fusion.as_str());
        }
        let (l, m) = (cfg.max_history, args.candidates.max(1));
        let dims = dims(&cfg);
        let flops = Flops::of(&dims, l, m);
        let req = random_request(&cfg, args.seed, l, m);
        let prepared = model.prepare(&req, REQUEST_TIME_MS).map_err(|e| anyhow!("prepare: {e}"))?;
        let scores = all_scores(&rank(&model, &req)?);
        Ok(Workload { model, cfg, l, m, dims, flops, req, prepared, scores })
    }

    fn print_header(&self, args: &BenchArgs) {
        let (cfg, fl) = (&self.cfg, &self.flops);
        println!(
            "\n(b) {}: L={} m={} d={} layers={} heads={} ffn={} head {:?} tasks={} fusion={} \
             micro_batch={}",
            match &args.model {
                Some(dir) => format!("model {}", dir.display()),
                None => "reference workload (random weights)".to_string(),
            },
            self.l,
            self.m,
            cfg.d_model,
            cfg.layers,
            cfg.heads,
            cfg.ffn_dim,
            self.dims.head,
            cfg.tasks.len(),
            cfg.fusion.as_str(),
            cfg.micro_batch
        );
        println!(
            "  {:.4} GFLOP nominal per request ({:.4} executed: the last layer's history tail is skipped by both \
             Slate and the ORT graph); per_candidate {:.2} GFLOP, concat {:.2} GFLOP",
            fl.nominal / 1e9,
            fl.executed / 1e9,
            fl.per_candidate / 1e9,
            fl.concat / 1e9
        );
    }
}

/// Starts the ONNX Runtime peer on the workload's weights and request (saved to `tmp`) and checks it
/// agrees with Slate. Returns the peer, or why there is none, and its largest score difference.
fn start_peer(
    args: &BenchArgs,
    w: &Workload,
    tmp: &TempDir,
) -> Result<(Option<Peer>, Option<String>, Option<f64>)> {
    if args.no_peer {
        return Ok((None, Some("skipped (--no-peer)".to_string()), None));
    }
    if let Some(why) = peer_missing(args) {
        println!("  peer: {why}");
        return Ok((None, Some(why), None));
    }
    let model_dir = tmp.path().join("model");
    w.model
        .save(&model_dir)
        .with_context(|| format!("saving the reference model to {}", model_dir.display()))?;
    let req_path = tmp.path().join("request.json");
    std::fs::write(&req_path, serde_json::to_string(&w.req)?)?;
    let scores_path = tmp.path().join("ort_scores.json");
    match Peer::start(args, &model_dir, &req_path, &scores_path, args.quick) {
        Ok(p) => {
            let ort_scores: Vec<Vec<f32>> = serde_json::from_str(&std::fs::read_to_string(&scores_path)?)?;
            let diff = max_abs_diff(&w.scores, &ort_scores);
            println!(
                "  peer: ONNX Runtime {} ({} intra-op threads), same weights (saved to a temp dir) and the same \
                 request; max |ORT − Slate| over {}×{} scores = {diff:.2e}",
                p.ready["ort_version"].as_str().unwrap_or("?"),
                args.threads,
                w.m,
                w.cfg.tasks.len()
            );
            if diff.is_nan() || diff > 1e-4 {
                bail!("ORT and Slate disagree on the same request (max abs diff {diff:.3e} > 1e-4)");
            }
            Ok((Some(p), None, Some(diff)))
        }
        Err(e) => {
            println!("  peer: failed to start ({e:#}); continuing without it");
            Ok((None, Some(format!("failed to start: {e:#}")), None))
        }
    }
}

/// The A/B rounds' timings (milliseconds per call).
struct Rounds {
    /// `rank()`, compute only (no featurization), `prepare()` alone, and ORT: over all rounds.
    full: Stats,
    comp: Stats,
    prep: Stats,
    ort: Option<Stats>,
    /// Each round's medians and foreign load (JSON).
    per_round: Vec<Value>,
    /// `rank()`'s own history-encode and candidates times.
    hist_ms: Vec<f64>,
    cand_ms: Vec<f64>,
    /// The runs of the quiet rounds only (foreign load under [`QUIET_FOREIGN`]).
    quiet_full: Vec<f64>,
    quiet_comp: Vec<f64>,
    quiet_ort: Vec<f64>,
    quiet_rounds: usize,
}

/// Warm-up, then `plan.rounds` rounds of one Slate block and one ORT block (when there is a peer).
fn ab_rounds(quick: bool, plan: &Plan, w: &Workload, mut peer: Option<Peer>) -> Result<Rounds> {
    let (model, req) = (&w.model, &w.req);
    let mut probs = vec![0f32; w.m * w.cfg.tasks.len()];
    for _ in 0..if quick { 5 } else { 20 } {
        rank(model, req)?;
        compute_only(model, &w.prepared, &mut probs);
    }
    let (mut full_all, mut comp_all, mut prep_all, mut ort_all) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut per_round, mut hist_ms, mut cand_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut quiet_full, mut quiet_comp, mut quiet_ort, mut quiet_rounds) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for r in 0..plan.rounds {
        // One Slate block: rank(), compute-only and prepare() interleaved call by call, so the three
        // share the machine's conditions; then one ORT block.
        let (mut full, mut comp, mut prep) = (Vec::new(), Vec::new(), Vec::new());
        let meter = LoadMeter::start(peer.as_ref().map(Peer::pid));
        for _ in 0..plan.block {
            let t = Instant::now();
            let resp = rank(model, req)?;
            full.push(t.elapsed().as_secs_f64() * 1e3);
            hist_ms.push(resp.timing.history_encode_ms);
            cand_ms.push(resp.timing.candidates_ms);
            let t = Instant::now();
            compute_only(model, &w.prepared, &mut probs);
            comp.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            std::hint::black_box(model.prepare(req, REQUEST_TIME_MS).map_err(|e| anyhow!("prepare: {e}"))?);
            prep.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let ort = match peer.as_mut() {
            Some(p) => Some(p.run(plan.block)?),
            None => None,
        };
        let foreign = meter.foreign();
        let (fm, cm) = (median(&full), median(&comp));
        let om = ort.as_deref().map(median);
        if plan.rounds <= 12 || r % (plan.rounds / 6).max(1) == 0 || r + 1 == plan.rounds {
            println!(
                "  round {}/{}: slate rank {:.3} ms, compute-only {:.3} ms{}; foreign load {}",
                r + 1,
                plan.rounds,
                fm,
                cm,
                om.map(|o| format!(", ORT {o:.3} ms → ORT/slate {:.2}", o / fm)).unwrap_or_default(),
                fmt_load(foreign)
            );
        }
        per_round.push(
            json!({"slate_rank_ms": fm, "slate_compute_ms": cm, "prepare_ms": median(&prep), "ort_ms": om,
            "foreign_load": foreign}),
        );
        if foreign.is_some_and(|f| f < QUIET_FOREIGN) {
            quiet_rounds += 1;
            quiet_full.extend(&full);
            quiet_comp.extend(&comp);
            if let Some(o) = &ort {
                quiet_ort.extend(o);
            }
        }
        full_all.extend(full);
        comp_all.extend(comp);
        prep_all.extend(prep);
        if let Some(o) = ort {
            ort_all.extend(o);
        }
    }
    drop(peer);
    Ok(Rounds {
        full: Stats::of(&full_all),
        comp: Stats::of(&comp_all),
        prep: Stats::of(&prep_all),
        ort: (!ort_all.is_empty()).then(|| Stats::of(&ort_all)),
        per_round,
        hist_ms,
        cand_ms,
        quiet_full,
        quiet_comp,
        quiet_ort,
        quiet_rounds,
    })
}

/// per_candidate mode and concat fusion, run on `slow_m` candidates and scaled to m.
struct SlowModes {
    slow_m: usize,
    scale: f64,
    pc: Stats,
    /// Max |per_candidate − amortized| over the same candidates.
    pc_parity: f64,
    pc_flops: f64,
    cc: Stats,
    cc_flops: f64,
}

fn slow_modes(args: &BenchArgs, plan: &Plan, w: &Workload) -> Result<SlowModes> {
    let (model, l, m) = (&w.model, w.l, w.m);
    // per_candidate: the literal pass, on slow_m candidates, scaled to m
    let slow_m = plan.slow_m.min(m);
    let scale = m as f64 / slow_m as f64;
    let mut req_pc = w.req.clone();
    req_pc.candidates.truncate(slow_m);
    req_pc.mode = "per_candidate".into();
    let pc_resp = rank(model, &req_pc)?;
    if pc_resp.mode != "per_candidate" {
        bail!("expected a per_candidate response, got mode {}", pc_resp.mode);
    }
    let pc_parity = max_abs_diff(&all_scores(&pc_resp), &w.scores[..slow_m]);
    let pc = Stats::of(&time_runs(0, plan.slow_runs, plan.slow_runs, Duration::ZERO, || {
        rank(model, &req_pc).map(drop)
    })?);
    let pc_flops = Flops::of(&w.dims, l, slow_m).per_candidate;

    // concat fusion, same dims
    let mut cfg_c = w.cfg.clone();
    cfg_c.fusion = Fusion::Concat;
    let model_c = RankerModel::random(&cfg_c, args.seed);
    let req_c = random_request(&cfg_c, args.seed, l, slow_m);
    rank(&model_c, &req_c)?;
    let cc = Stats::of(&time_runs(0, plan.slow_runs, plan.slow_runs, Duration::ZERO, || {
        rank(&model_c, &req_c).map(drop)
    })?);
    let cc_flops = Flops::of(&w.dims, l, slow_m).concat;
    Ok(SlowModes { slow_m, scale, pc, pc_parity, pc_flops, cc, cc_flops })
}

/// GFLOP/s at the median of each row of the table.
struct Rates {
    full: f64,
    comp: f64,
    ort: Option<f64>,
    pc: f64,
    cc: f64,
}

/// The timing table of section (b) and the amortized / per_candidate / concat comparison.
fn print_table(w: &Workload, rounds: &Rounds, slow: &SlowModes, peak: f64) -> Rates {
    let (fl, full) = (&w.flops, &rounds.full);
    let frac = |gf: f64| 100.0 * gf / peak;
    println!("\n  {:<36} {:>10} {:>10} {:>9} {:>8}", "", "median ms", "p99 ms", "GFLOP/s", "% peak");
    let row = |name: &str, st: &Stats, flop: f64, sc: f64| {
        let g = gflops(flop, st.median_ms);
        println!(
            "  {:<36} {:>10.3} {:>10.3} {:>9.1} {:>7.1}%",
            name,
            st.median_ms * sc,
            st.p99_ms * sc,
            g,
            frac(g)
        );
        g
    };
    let g_full = row("slate amortized, rank() (all of it)", full, fl.nominal, 1.0);
    let g_comp = row("slate amortized, excl. featurization", &rounds.comp, fl.nominal, 1.0);
    let prep = &rounds.prep;
    println!("  {:<36} {:>10.3} {:>10.3}", "  (featurization: prepare() alone)", prep.median_ms, prep.p99_ms);
    println!(
        "  {:<36} {:>10.3} + {:.3} (rank()'s own timing)",
        "  (history encode + candidates/head)",
        median(&rounds.hist_ms),
        median(&rounds.cand_ms)
    );
    let g_ort = rounds.ort.as_ref().map(|o| row("onnxruntime amortized (featurized in)", o, fl.nominal, 1.0));
    let (slow_m, scale) = (slow.slow_m, slow.scale);
    let scaled = if slow_m < w.m { format!(" [{slow_m} cand. ×{scale:.0}]") } else { String::new() };
    let g_pc = row(&format!("slate per_candidate{scaled}"), &slow.pc, slow.pc_flops, scale);
    let g_cc = row(&format!("slate concat fusion{scaled}"), &slow.cc, slow.cc_flops, scale);
    let pc_ms = slow.pc.median_ms * scale;
    let cc_ms = slow.cc.median_ms * scale;
    println!(
        "\n  amortized / per_candidate time: {:.5} (per_candidate is {:.0}× slower)",
        full.median_ms / pc_ms,
        pc_ms / full.median_ms
    );
    println!(
        "  amortized / concat time:        {:.5} (concat is {:.0}× slower)",
        full.median_ms / cc_ms,
        cc_ms / full.median_ms
    );
    println!(
        "  per_candidate vs amortized scores on the same {slow_m} candidates: max |diff| = {:.2e}",
        slow.pc_parity
    );
    Rates { full: g_full, comp: g_comp, ort: g_ort, pc: g_pc, cc: g_cc }
}

/// ORT ÷ Slate time: the median of the per-round ratios (paired, so slow drifts cancel) and the pooled
/// medians. JSON `null` without a peer.
fn print_ort_ratios(rounds: &Rounds, peer_note: Option<&str>) -> Value {
    let Some(o) = &rounds.ort else {
        println!("  ORT_ms / slate_ms: no peer ({})", peer_note.unwrap_or("?"));
        return json!(null);
    };
    let (full, comp) = (&rounds.full, &rounds.comp);
    let ratio_to = |key: &str| -> Vec<f64> {
        rounds.per_round.iter().filter_map(|r| Some(r["ort_ms"].as_f64()? / r[key].as_f64()?)).collect()
    };
    let per_round = ratio_to("slate_rank_ms");
    let per_round_c = ratio_to("slate_compute_ms");
    let mut sorted = per_round.clone();
    sorted.sort_by(f64::total_cmp);
    let (q1, q3) = (percentile(&sorted, 25.0), percentile(&sorted, 75.0));
    let (paired, paired_c) = (median(&per_round), median(&per_round_c));
    println!(
        "  ORT_ms / slate_ms = {paired:.2} (rank(), incl. featurization), {paired_c:.2} (slate excl. featurization): \
         median of the {} per-round ratios (quartiles {q1:.2}–{q3:.2}); ≥ 1.0 means Slate is faster",
        per_round.len()
    );
    println!(
        "  pooled medians: ORT {:.3} ms / slate rank() {:.3} ms = {:.2}",
        o.median_ms,
        full.median_ms,
        o.median_ms / full.median_ms
    );
    json!({
        "ort_over_slate_rank": paired,
        "ort_over_slate_compute": paired_c,
        "per_round_quartiles_rank": [q1, q3],
        "pooled_ort_over_slate_rank": o.median_ms / full.median_ms,
        "pooled_ort_over_slate_compute": o.median_ms / comp.median_ms,
        "per_round_ort_over_slate_rank": per_round,
        "per_round_ort_over_slate_compute": per_round_c,
    })
}

/// The figures of the quiet rounds only (foreign load under [`QUIET_FOREIGN`]).
fn print_quiet(plan: &Plan, w: &Workload, rounds: &Rounds) -> Value {
    let quiet_rounds = rounds.quiet_rounds;
    let mut quiet = json!({"rounds": quiet_rounds, "of": plan.rounds, "threshold": QUIET_FOREIGN});
    if quiet_rounds == 0 {
        println!(
            "  quiet rounds only: none of {} rounds had foreign load < {:.0}% (the figures above are contended)",
            plan.rounds,
            100.0 * QUIET_FOREIGN
        );
        return quiet;
    }
    let nominal = w.flops.nominal;
    let (qf, qc) = (Stats::of(&rounds.quiet_full), Stats::of(&rounds.quiet_comp));
    let qo = (!rounds.quiet_ort.is_empty()).then(|| Stats::of(&rounds.quiet_ort));
    println!(
        "  quiet rounds only ({quiet_rounds}/{}, foreign load < {:.0}%): slate rank {:.3} ms (p99 {:.3}, {:.1} GFLOP/s), \
         compute-only {:.3} ms{}",
        plan.rounds,
        100.0 * QUIET_FOREIGN,
        qf.median_ms,
        qf.p99_ms,
        gflops(nominal, qf.median_ms),
        qc.median_ms,
        qo.map(|o| format!(
            ", ORT {:.3} ms (p99 {:.3}, {:.1} GFLOP/s); pooled ORT/slate {:.2} (rank), {:.2} (compute-only)",
            o.median_ms,
            o.p99_ms,
            gflops(nominal, o.median_ms),
            o.median_ms / qf.median_ms,
            o.median_ms / qc.median_ms
        ))
        .unwrap_or_default()
    );
    quiet["slate_rank"] = qf.json();
    quiet["slate_compute"] = qc.json();
    quiet["slate_rank_gflops"] = json!(gflops(nominal, qf.median_ms));
    let quiet_ratio: Vec<f64> = rounds
        .per_round
        .iter()
        .filter(|r| r["foreign_load"].as_f64().is_some_and(|f| f < QUIET_FOREIGN))
        .filter_map(|r| Some(r["ort_ms"].as_f64()? / r["slate_rank_ms"].as_f64()?))
        .collect();
    if !quiet_ratio.is_empty() {
        println!(
            "  quiet rounds' ORT_ms / slate_ms (median of per-round ratios): {:.2}",
            median(&quiet_ratio)
        );
        quiet["paired_ort_over_slate_rank"] = json!(median(&quiet_ratio));
    }
    if let Some(o) = qo {
        quiet["onnxruntime"] = o.json();
        quiet["pooled_ort_over_slate_rank"] = json!(o.median_ms / qf.median_ms);
        quiet["pooled_ort_over_slate_compute"] = json!(o.median_ms / qc.median_ms);
    }
    quiet
}
