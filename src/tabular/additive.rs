//! Additive models (`kind = "additive"`): a margin per output group that is an intercept plus one
//! looked-up score per term, each term a main effect (one feature) or a pair (two features), its
//! scores a table over the feature's bins. Explainable Boosting Machines (interpret's EBM) and
//! FAST-style piecewise-constant models convert to this form (`tools/tabular/additive.py`); the JSON
//! file is described in `docs/additive-format.md`.
//!
//! Binning follows interpret's `Discretize` exactly: a numeric value `x` with sorted edges
//! `e_0 < … < e_{E-1}` falls in bin `1 + #{i : e_i ≤ x}` (a value equal to an edge goes to the bin
//! above it, ±∞ to the end bins), NaN in bin 0 (missing); bin `E + 2` is the unknown bin, which
//! numeric values never reach. A categorical dimension lists its category codes: code `i` is bin
//! `1 + i`, a value that is no code goes to the unknown bin (`C + 1`). Edges compare in f64 against
//! the f32 input widened, and scores add in f64 (as interpret does), rounded to f32 once at the end.
//!
//! Contributions: a main effect's score goes to its feature, a pair's score half to each of its two
//! features, the intercept to the bias slot; the margin is computed as the sum of those slots, so
//! contributions plus bias equal the margin exactly before the final rounding to f32.

use super::Transform;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The value of the file's top-level `format` key.
pub const FORMAT: &str = "slate_additive";
/// The one `version` of the format read.
pub const VERSION: u64 = 1;
/// Features per row.
pub const MAX_FEATURES: usize = 1 << 20;
/// Terms in one model.
pub const MAX_TERMS: usize = 1 << 16;
/// Output groups (classes).
pub const MAX_GROUPS: usize = 1 << 10;
/// Edges (or categories) of one term dimension.
pub const MAX_BINS: usize = 1 << 16;
/// Score values (cells × groups) across all terms, 8 bytes each.
pub const MAX_SCORES: usize = 1 << 26;
/// Features one term may span (main effects and pairs).
pub const MAX_TERM_FEATURES: usize = 2;

/// How one term dimension maps a feature's value to a bin.
#[derive(Debug, Clone, PartialEq)]
pub enum Bins {
    /// Sorted, finite, strictly increasing edges.
    Edges(Vec<f64>),
    /// Category codes sorted by value, each with its bin (`1 + position in the file's list`).
    Categories(Vec<(f64, u32)>),
}

impl Bins {
    /// Bins of the dimension, missing and unknown included.
    pub fn slots(&self) -> usize {
        match self {
            Bins::Edges(e) => e.len() + 3,
            Bins::Categories(c) => c.len() + 2,
        }
    }

    /// The bin of value `x` (NaN = missing = 0).
    #[inline]
    pub fn bin(&self, x: f32) -> usize {
        if x.is_nan() {
            return 0;
        }
        let x = x as f64;
        match self {
            Bins::Edges(e) => 1 + e.partition_point(|&edge| edge <= x),
            Bins::Categories(c) => match c.binary_search_by(|(code, _)| code.total_cmp(&x)) {
                Ok(i) => c[i].1 as usize,
                Err(_) => c.len() + 1,
            },
        }
    }
}

/// One dimension of a term: a feature and its bins.
#[derive(Debug, Clone, PartialEq)]
pub struct Dim {
    pub feature: usize,
    pub bins: Bins,
}

/// A main effect (one dimension) or a pair (two).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub name: String,
    pub dims: Vec<Dim>,
    /// Row-major over the dimensions' bins, the groups innermost: `Π slots × num_groups` values.
    pub scores: Vec<f64>,
}

/// A checked additive model.
#[derive(Debug, Clone)]
pub struct Additive {
    pub num_features: usize,
    pub num_groups: usize,
    pub intercept: Vec<f64>,
    pub transform: Transform,
    pub terms: Vec<Term>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File<'a> {
    format: String,
    version: u64,
    num_features: usize,
    #[serde(default)]
    feature_names: Option<Vec<String>>,
    link: String,
    intercept: Vec<f64>,
    #[serde(borrow)]
    terms: Vec<JsonTerm<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTerm<'a> {
    name: String,
    features: Vec<usize>,
    #[serde(borrow)]
    bins: Vec<JsonBins<'a>>,
    /// `null` is read (and refused, naming the term) so that a NaN written as null is caught here.
    scores: Vec<Option<f64>>,
}

/// Edges and codes are read from their JSON text with Rust's correctly rounded parser, so a value
/// equal to an edge in the source library is equal here too.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBins<'a> {
    #[serde(default, borrow)]
    edges: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    categories: Option<Vec<&'a RawValue>>,
}

/// Parses and checks an additive model file (errors name the term and field).
pub fn parse(json: &[u8]) -> Result<Additive, String> {
    let file: File = serde_json::from_slice(json).map_err(|e| format!("not a {FORMAT} model: {e}"))?;
    if file.format != FORMAT {
        return Err(format!("format = {:?}: expected {FORMAT:?}", file.format));
    }
    if file.version != VERSION {
        return Err(format!("version = {}: this server reads version {VERSION}", file.version));
    }
    let f = file.num_features;
    if f == 0 || f > MAX_FEATURES {
        return Err(format!("num_features = {f}: must be 1..={MAX_FEATURES}"));
    }
    if let Some(names) = &file.feature_names {
        if names.len() != f {
            return Err(format!("feature_names has {} names for {f} features", names.len()));
        }
    }
    let g = file.intercept.len();
    if g == 0 || g > MAX_GROUPS {
        return Err(format!("intercept has {g} values: one per output group, 1..={MAX_GROUPS}"));
    }
    // Every row is evaluated in `g × (f + 1)` f64 slots (its contributions), margins included.
    if g.checked_mul(f + 1).is_none_or(|slots| slots > super::MAX_ROW_CONTRIBUTIONS) {
        return Err(format!(
            "{g} output group(s) × ({f} features + 1) values per row: at most {}",
            super::MAX_ROW_CONTRIBUTIONS
        ));
    }
    if let Some((k, v)) = file.intercept.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!("intercept[{k}] = {v}: not finite"));
    }
    let transform = match (file.link.as_str(), g) {
        ("identity", _) => Transform::Identity,
        ("logit", 1) => Transform::Sigmoid,
        ("log", _) => Transform::Exp,
        ("mlogit", 3..) => Transform::Softmax,
        (link @ ("logit" | "mlogit"), _) => {
            return Err(format!("link = {link:?} with {g} output group(s)"));
        }
        (other, _) => {
            return Err(format!("link = {other:?}: expected identity, logit, log or mlogit"));
        }
    };
    if file.terms.len() > MAX_TERMS {
        return Err(format!("{} terms: at most {MAX_TERMS}", file.terms.len()));
    }
    let mut total = 0usize;
    let mut terms = Vec::with_capacity(file.terms.len());
    for (t, jt) in file.terms.into_iter().enumerate() {
        let term = check_term(t, jt, f, g)?;
        total = total.saturating_add(term.scores.len());
        if total > MAX_SCORES {
            return Err(format!("term {t}: more than {MAX_SCORES} scores in all"));
        }
        terms.push(term);
    }
    Ok(Additive { num_features: f, num_groups: g, intercept: file.intercept, transform, terms })
}

fn check_term(t: usize, jt: JsonTerm, num_features: usize, groups: usize) -> Result<Term, String> {
    let at = |what: String| format!("term {t} ({:?}): {what}", jt.name);
    let d = jt.features.len();
    if d == 0 || d > MAX_TERM_FEATURES {
        return Err(at(format!("{d} features: a term has 1 or 2")));
    }
    if jt.bins.len() != d {
        return Err(at(format!("bins has {} entries for {d} features", jt.bins.len())));
    }
    if d == 2 && jt.features[0] == jt.features[1] {
        return Err(at(format!("feature {} twice", jt.features[0])));
    }
    let mut dims = Vec::with_capacity(d);
    let mut cells = groups;
    for (i, (&feature, jb)) in jt.features.iter().zip(&jt.bins).enumerate() {
        if feature >= num_features {
            return Err(at(format!("features[{i}] = {feature}: outside 0..{num_features}")));
        }
        let bins = check_bins(jb).map_err(|e| at(format!("bins[{i}].{e}")))?;
        cells = cells
            .checked_mul(bins.slots())
            .filter(|&c| c <= MAX_SCORES)
            .ok_or_else(|| at(format!("more than {MAX_SCORES} scores")))?;
        dims.push(Dim { feature, bins });
    }
    if jt.scores.len() != cells {
        let slots: Vec<String> = dims.iter().map(|d| d.bins.slots().to_string()).collect();
        return Err(at(format!(
            "scores has {} values: expected {cells} ({} bins × {groups} group(s))",
            jt.scores.len(),
            slots.join(" × ")
        )));
    }
    let mut scores = Vec::with_capacity(cells);
    for (k, v) in jt.scores.iter().enumerate() {
        match v {
            Some(v) if v.is_finite() => scores.push(*v),
            Some(v) => return Err(at(format!("scores[{k}] = {v}: not finite"))),
            None => return Err(at(format!("scores[{k}] = null: not a number"))),
        }
    }
    Ok(Term { name: jt.name, dims, scores })
}

fn check_bins(jb: &JsonBins) -> Result<Bins, String> {
    let numbers = |key: &str, raw: &[&RawValue]| -> Result<Vec<f64>, String> {
        if raw.len() > MAX_BINS {
            return Err(format!("{key}: {} values, at most {MAX_BINS}", raw.len()));
        }
        raw.iter()
            .enumerate()
            .map(|(k, r)| match r.get().parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(v),
                _ => Err(format!("{key}[{k}] = {}: not a finite number", r.get())),
            })
            .collect()
    };
    match (&jb.edges, &jb.categories) {
        (Some(raw), None) => {
            let edges = numbers("edges", raw)?;
            if let Some(k) = (1..edges.len()).find(|&k| edges[k] <= edges[k - 1]) {
                return Err(format!(
                    "edges[{k}] = {} is not above edges[{}] = {}",
                    edges[k],
                    k - 1,
                    edges[k - 1]
                ));
            }
            Ok(Bins::Edges(edges))
        }
        (None, Some(raw)) => {
            let codes = numbers("categories", raw)?;
            let mut sorted: Vec<(f64, u32)> =
                codes.iter().enumerate().map(|(i, &c)| (c + 0.0, i as u32 + 1)).collect();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(format!("categories: {} is listed twice", w[0].0));
            }
            Ok(Bins::Categories(sorted))
        }
        _ => Err("edges or categories: exactly one of them".into()),
    }
}

impl Additive {
    /// Margins of `rows` (`n × num_features`) into `margin` (`n × num_groups`) and, when given,
    /// contributions into `contrib` (`n × num_groups × (num_features + 1)`, the intercept last).
    pub fn margins(&self, rows: &[f32], margin: &mut [f32], mut contrib: Option<&mut [f32]>) {
        let (f, g) = (self.num_features, self.num_groups);
        assert!(rows.len().is_multiple_of(f), "rows must be whole");
        let n = rows.len() / f;
        assert_eq!(margin.len(), n * g, "one margin per row and group");
        let w = f + 1;
        if let Some(c) = &contrib {
            assert_eq!(c.len(), n * g * w, "contributions: n × groups × (features + 1)");
        }
        // One row's slots in f64, laid out as its contributions: [group][feature…, bias].
        let mut acc = vec![0f64; g * w];
        for (r, row) in rows.chunks_exact(f).enumerate() {
            self.row_slots(row, &mut acc);
            for k in 0..g {
                let slots = &acc[k * w..(k + 1) * w];
                margin[r * g + k] = sum_slots(slots) as f32;
            }
            if let Some(c) = contrib.as_deref_mut() {
                for (o, &v) in c[r * g * w..(r + 1) * g * w].iter_mut().zip(&acc) {
                    *o = v as f32;
                }
            }
        }
    }

    /// One row's term scores, split over its features, into `acc` (`num_groups × (num_features + 1)`,
    /// the intercept in each group's last slot).
    pub fn row_slots(&self, row: &[f32], acc: &mut [f64]) {
        let (f, g) = (self.num_features, self.num_groups);
        let w = f + 1;
        acc.fill(0.0);
        for k in 0..g {
            acc[k * w + f] = self.intercept[k];
        }
        for term in &self.terms {
            match term.dims.as_slice() {
                [a] => {
                    let cell = a.bins.bin(row[a.feature]) * g;
                    for k in 0..g {
                        acc[k * w + a.feature] += term.scores[cell + k];
                    }
                }
                [a, b] => {
                    let cell = (a.bins.bin(row[a.feature]) * b.bins.slots() + b.bins.bin(row[b.feature])) * g;
                    for k in 0..g {
                        let half = 0.5 * term.scores[cell + k];
                        acc[k * w + a.feature] += half;
                        acc[k * w + b.feature] += half;
                    }
                }
                _ => unreachable!("terms have 1 or 2 dimensions (checked at load)"),
            }
        }
    }
}

/// The margin of one group's slots: the features' contributions in order, then the intercept.
#[inline]
pub fn sum_slots(slots: &[f64]) -> f64 {
    slots.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Two features: a main effect on x0 (edges 1, 2), a categorical main effect on x1 (codes 5, 3),
    /// a pair over (x0 with edge 0, x1 with edge 10).
    fn model() -> serde_json::Value {
        json!({
            "format": "slate_additive", "version": 1, "num_features": 2, "link": "logit",
            "intercept": [0.25],
            "terms": [
                {"name": "x0", "features": [0], "bins": [{"edges": [1.0, 2.0]}],
                 "scores": [-9.0, 1.0, 2.0, 3.0, 100.0]},
                {"name": "x1", "features": [1], "bins": [{"categories": [5, 3]}],
                 "scores": [0.5, 10.0, 20.0, 30.0]},
                {"name": "x0 & x1", "features": [0, 1], "bins": [{"edges": [0.0]}, {"edges": [10.0]}],
                 // 4 × 4 cells: [x0 bin][x1 bin]
                 "scores": [0.0, 0.0, 0.0, 0.0,
                            0.0, 0.2, 0.4, 0.0,
                            0.0, 0.6, 0.8, 0.0,
                            0.0, 0.0, 0.0, 0.0]}
            ]
        })
    }

    fn parse_value(v: &serde_json::Value) -> Result<Additive, String> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn edges_bin_as_interpret_discretizes() {
        // interpret's native Discretize on cuts [1, 2, 3] gives, for
        // [0.5, 1, 1.5, 2, 3, 3.5, nan, inf, -inf, -0.0]: [1, 2, 2, 3, 4, 4, 0, 4, 1, 1].
        let b = Bins::Edges(vec![1.0, 2.0, 3.0]);
        let xs = [0.5, 1.0, 1.5, 2.0, 3.0, 3.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0];
        let got: Vec<usize> = xs.iter().map(|&x| b.bin(x)).collect();
        assert_eq!(got, [1, 2, 2, 3, 4, 4, 0, 4, 1, 1]);
        // and on cuts [0]: 0.0 and -0.0 both go above the edge.
        let z = Bins::Edges(vec![0.0]);
        assert_eq!((z.bin(0.0), z.bin(-0.0), z.bin(5.0)), (2, 2, 2));
        assert_eq!(b.slots(), 6);
    }

    #[test]
    fn margins_add_the_terms_and_contributions_sum_to_them() {
        let m = parse_value(&model()).unwrap();
        assert_eq!((m.num_features, m.num_groups, m.transform), (2, 1, Transform::Sigmoid));
        assert_eq!(m.terms[1].dims[0].bins, Bins::Categories(vec![(3.0, 2), (5.0, 1)]));
        let rows = [
            1.0,
            5.0, // x0 bin 2 (2.0), x1 code 5 → bin 1 (10.0); pair (1, 1)... x0 ≥ 0 → 2, x1 < 10 → 1: 0.6
            f32::NAN,
            3.0, // missing (-9), code 3 → bin 2 (20); pair (0, 1): 0
            -1.0,
            4.0, // bin 1 (1.0), unknown code → bin 3 (30); pair (1, 1): 0.2
            2.5,
            f32::NAN, // bin 3 (3.0), missing (0.5); pair (2, 0): 0
        ];
        let mut margin = [0.0; 4];
        let mut contrib = [0.0; 12];
        m.margins(&rows, &mut margin, Some(&mut contrib));
        let want = [0.25 + 2.0 + 10.0 + 0.6, 0.25 - 9.0 + 20.0, 0.25 + 1.0 + 30.0 + 0.2, 0.25 + 3.0 + 0.5];
        for (got, want) in margin.iter().zip(want) {
            assert_eq!(*got, want as f32);
        }
        assert_eq!(&contrib[..3], &[2.3, 10.3, 0.25]);
        // The f64 slots sum to the margin exactly, each row.
        let mut acc = [0f64; 3];
        for (r, row) in rows.chunks_exact(2).enumerate() {
            m.row_slots(row, &mut acc);
            assert_eq!(acc[0] + acc[1] + acc[2], sum_slots(&acc));
            assert_eq!(sum_slots(&acc) as f32, margin[r]);
            let c = &contrib[r * 3..r * 3 + 3];
            let sum: f64 = c.iter().map(|&v| v as f64).sum();
            assert!((sum - margin[r] as f64).abs() <= 4.0 * f32::EPSILON as f64 * margin[r].abs() as f64);
        }
        let mut alone = [0.0; 4];
        m.margins(&rows, &mut alone, None);
        assert_eq!(alone, margin, "the same margins with and without contributions");
    }

    #[test]
    fn groups_are_innermost_in_the_scores() {
        let v = json!({
            "format": "slate_additive", "version": 1, "num_features": 1, "link": "mlogit",
            "intercept": [0.0, 1.0, 2.0],
            "terms": [{"name": "x0", "features": [0], "bins": [{"edges": [0.0]}],
                       "scores": [0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0]}]
        });
        let m = parse_value(&v).unwrap();
        assert_eq!(m.transform, Transform::Softmax);
        let mut margin = [0.0; 6];
        let mut contrib = [0.0; 12];
        m.margins(&[-1.0, 1.0], &mut margin, Some(&mut contrib));
        assert_eq!(margin, [1.0, 3.0, 5.0, 4.0, 6.0, 8.0]);
        assert_eq!(contrib, [1.0, 0.0, 2.0, 1.0, 3.0, 2.0, 4.0, 0.0, 5.0, 1.0, 6.0, 2.0]);
    }

    #[test]
    fn hostile_files_fail_naming_the_term_and_field() {
        let case = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = model();
            edit(&mut v);
            parse_value(&v).unwrap_err()
        };
        let e = case(&|v| v["terms"][0]["bins"][0]["edges"] = json!([2.0, 1.0]));
        assert_eq!(e, "term 0 (\"x0\"): bins[0].edges[1] = 1 is not above edges[0] = 2");
        let e = case(&|v| v["terms"][0]["bins"][0]["edges"] = json!([1.0, 1.0]));
        assert!(e.contains("edges[1] = 1 is not above"), "{e}");
        let e = case(&|v| v["terms"][2]["scores"] = json!(vec![0.0; 15]));
        assert_eq!(e, "term 2 (\"x0 & x1\"): scores has 15 values: expected 16 (4 × 4 bins × 1 group(s))");
        let e = case(&|v| v["terms"][1]["scores"][2] = json!(null));
        assert_eq!(e, "term 1 (\"x1\"): scores[2] = null: not a number");
        let e = parse(model().to_string().replace("100.0", "NaN").as_bytes()).unwrap_err();
        assert!(e.starts_with("not a slate_additive model"), "{e}");
        let e = parse(model().to_string().replace("[1.0,2.0]", "[1.0,1e400]").as_bytes()).unwrap_err();
        assert_eq!(e, "term 0 (\"x0\"): bins[0].edges[1] = 1e400: not a finite number");
        let e = case(&|v| v["terms"][1]["bins"][0]["categories"] = json!([3, 3]));
        assert_eq!(e, "term 1 (\"x1\"): bins[0].categories: 3 is listed twice");
        let e = case(&|v| v["terms"][0]["features"] = json!([7]));
        assert_eq!(e, "term 0 (\"x0\"): features[0] = 7: outside 0..2");
        let e = case(&|v| v["terms"][2]["features"] = json!([1, 1]));
        assert_eq!(e, "term 2 (\"x0 & x1\"): feature 1 twice");
        let e = case(&|v| v["terms"][0]["features"] = json!([0, 1, 0]));
        assert_eq!(e, "term 0 (\"x0\"): 3 features: a term has 1 or 2");
        let e = case(&|v| v["terms"][0]["bins"] = json!([{"edges": [1.0], "categories": [1]}]));
        assert_eq!(e, "term 0 (\"x0\"): bins[0].edges or categories: exactly one of them");
        let e = case(&|v| v["terms"][0]["bins"][0]["edges"] = json!(vec![0; MAX_BINS + 1]));
        assert!(e.contains(&format!("edges: {} values, at most {MAX_BINS}", MAX_BINS + 1)), "{e}");
        let e = case(&|v| v["num_features"] = json!(0));
        assert!(e.starts_with("num_features = 0"), "{e}");
        let e = case(&|v| v["num_features"] = json!(u64::MAX));
        assert!(e.starts_with("num_features = "), "{e}");
        let e = case(&|v| v["intercept"] = json!([0.0, 1.0]));
        assert_eq!(e, "link = \"logit\" with 2 output group(s)");
        let e = case(&|v| v["link"] = json!("probit"));
        assert!(e.starts_with("link = \"probit\""), "{e}");
        let e = case(&|v| v["version"] = json!(2));
        assert!(e.starts_with("version = 2"), "{e}");
        let e = case(&|v| v["feature_names"] = json!(["a"]));
        assert_eq!(e, "feature_names has 1 names for 2 features");
        // Two pair dimensions of 2^16 edges each: cells over the bound, found before any table.
        let e = case(&|v| {
            let edges: Vec<f64> = (0..MAX_BINS).map(|i| i as f64).collect();
            v["terms"][2]["bins"] = json!([{"edges": edges}, {"edges": edges}]);
        });
        assert!(e.contains(&format!("more than {MAX_SCORES} scores")), "{e}");
    }

    /// Fuzz finding (`tabular_model`): a 5 KB file with 2^20 features and 1,024 groups loaded, and
    /// its first row (the loader's warm-up) allocated 2^30 f64 slots (8 GiB).
    #[test]
    fn a_model_whose_rows_need_too_many_slots_is_refused_at_load() {
        let wide = |groups: usize, features: usize| {
            json!({"format": "slate_additive", "version": 1, "num_features": features, "link": "identity",
                   "intercept": vec![0.0; groups], "terms": []})
        };
        let e = parse_value(&wide(MAX_GROUPS, MAX_FEATURES)).unwrap_err();
        assert_eq!(e, "1024 output group(s) × (1048576 features + 1) values per row: at most 4194304");
        let e = parse_value(&wide(4, 1 << 20)).unwrap_err();
        assert!(e.starts_with("4 output group(s) × (1048576 features + 1)"), "{e}");
        let at_the_limit = parse_value(&wide(4, (1 << 20) - 1)).unwrap();
        assert_eq!(
            at_the_limit.num_groups * (at_the_limit.num_features + 1),
            super::super::MAX_ROW_CONTRIBUTIONS
        );
    }
}
