//! A tabular (ads-scoring) model file from bytes, its format detected from the content as the
//! loader does (`TabularModel::from_bytes`: XGBoost JSON and UBJSON, LightGBM text, slate_additive
//! JSON, slate_soft_trees safetensors); a model that loads reports its metadata and runs the
//! server's warm-up row, then a few hostile rows (missing, zero, huge, infinite, category-like and
//! input-derived values) and, when its features allow, a batch past the size that goes to the
//! compute pool, asking for every output (contributions through TreeSHAP included). Each output's
//! length must match the shape the protocol reports for it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slate::server::inference::{output_data, output_shape, ModelMeta, OUTPUTS};
use slate::tabular::{Outputs, TabularModel};

/// Values fed to the model in one `predict` at most (a model of many features gets fewer rows).
const MAX_VALUES: usize = 1 << 16;
/// Rows of the batch that runs on the compute pool (over twice every kind's block of rows).
const POOL_ROWS: usize = 520;

/// Fill values of the hostile rows, one row each.
const FILLS: [f32; 9] = [f32::NAN, 0.0, -0.0, 1e-36, 3.0, -1e30, f32::MAX, f32::INFINITY, f32::NEG_INFINITY];

/// A row of category-like values (a categorical split's codes), then one of the input's bytes as
/// small numbers.
fn derived_rows(f: usize, data: &[u8]) -> Vec<f32> {
    let mut rows: Vec<f32> = (0..f).map(|i| (i % 64) as f32).collect();
    rows.extend((0..f).map(|i| data.get(i % data.len().max(1)).map_or(0.0, |&b| f32::from(b as i8) / 4.0)));
    rows
}

fn predict(model: &TabularModel, rows: &[f32], outputs: Outputs) {
    let n = rows.len() / model.num_features();
    let Ok(p) = model.predict(rows, outputs) else {
        // Only contributions a model cannot explain are refused.
        assert!(outputs.contributions, "{} refused margins or scores", model.format);
        return;
    };
    let wanted = [outputs.score, outputs.margin, outputs.contributions];
    for (name, wanted) in OUTPUTS.into_iter().zip(wanted) {
        let len = output_data(&p, name).len();
        let shape: i64 = output_shape(model, name, n as i64).iter().product();
        assert_eq!(len as i64, if wanted { shape } else { 0 }, "{name} of {n} rows of a {}", model.format);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(model) = TabularModel::from_bytes(data) else { return };
    let f = model.num_features();
    assert!(f > 0 && model.num_groups() > 0 && model.score_width() > 0, "an empty {}", model.format);
    let _ = model.describe();
    let _ = ModelMeta::of(&model);
    // The loader's warm-up row.
    predict(&model, &vec![f32::NAN; f], Outputs { margin: true, score: true, contributions: false });
    let all = Outputs { margin: true, score: true, contributions: true };
    let derived = derived_rows(f, data);
    if (FILLS.len() + 2) * f > MAX_VALUES {
        // Many features: the input's row alone.
        predict(&model, &derived[f..], all);
        return;
    }
    let mut rows: Vec<f32> = FILLS.iter().flat_map(|&v| std::iter::repeat_n(v, f)).collect();
    rows.extend(derived);
    predict(&model, &rows, all);
    predict(&model, &rows, Outputs { margin: false, score: true, contributions: false });
    if POOL_ROWS * f <= MAX_VALUES {
        let many: Vec<f32> = rows.iter().copied().cycle().take(POOL_ROWS * f).collect();
        predict(&model, &many, all);
    }
});
