//! MovieLens-100K in RecBole's atomic-file layout (`scripts/fetch-data.sh` puts it in `data/ml-100k/`):
//! tab-separated files whose first line names typed columns (`user_id:token`, `rating:float`, …).
//!
//! - `ml-100k.inter`: `user_id`, `item_id`, `rating` (1–5), `timestamp` (Unix seconds);
//! - `ml-100k.user`: `user_id`, `age`, `gender` (`M`/`F`), `occupation`, `zip_code`;
//! - `ml-100k.item` (optional): `item_id`, `movie_title`, `release_year`, `class` (genres).
//!
//! Columns are found by name, so their order does not matter; every parse error names the file and line.
//! This module also fixes how a MovieLens user and rating become ranker features (the demo model's
//! contract with clients): [`member_sparse`], [`action_for_rating`].

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One rating event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating {
    pub user_id: u64,
    pub item_id: u64,
    /// 1..=5.
    pub rating: u8,
    /// Unix seconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: u64,
    pub age: u32,
    /// `'M'` or `'F'`.
    pub gender: char,
    pub occupation: String,
    pub zip_code: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub item_id: u64,
    pub title: String,
    pub year: Option<u32>,
    pub genres: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MovieLens {
    /// In file order.
    pub ratings: Vec<Rating>,
    pub users: BTreeMap<u64, User>,
    /// Empty when `ml-100k.item` is absent.
    pub items: BTreeMap<u64, Item>,
}

/// The 21 occupations of MovieLens-100K; the member sparse feature `occupation` is the index in this list.
pub const OCCUPATIONS: [&str; 21] = [
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
];

/// Lower bounds of the age buckets (MovieLens-1M's groups): `<18`, `18–24`, `25–34`, `35–44`, `45–49`,
/// `50–55`, `56+`. The member sparse feature `age` is the bucket index 0..=6.
pub const AGE_BUCKET_STARTS: [u32; 7] = [0, 18, 25, 35, 45, 50, 56];

/// The demo model's action vocabulary; a rating `r` becomes the history action `ACTIONS[r - 1]`.
pub const ACTIONS: [&str; 5] = ["dislike", "impression", "click", "like", "love"];

pub fn age_bucket(age: u32) -> u64 {
    AGE_BUCKET_STARTS.iter().rposition(|&s| age >= s).unwrap_or(0) as u64
}

/// `M` → 0, `F` → 1.
pub fn gender_id(gender: char) -> Option<u64> {
    match gender.to_ascii_uppercase() {
        'M' => Some(0),
        'F' => Some(1),
        _ => None,
    }
}

pub fn occupation_id(occupation: &str) -> Option<u64> {
    OCCUPATIONS.iter().position(|&o| o.eq_ignore_ascii_case(occupation.trim())).map(|i| i as u64)
}

/// The member sparse features a client sends for this user: `gender` (M=0, F=1), `age` (bucket index,
/// see [`AGE_BUCKET_STARTS`]) and `occupation` (index in [`OCCUPATIONS`]). Unknown values are left out
/// (the model then uses the feature's "absent" row).
pub fn member_sparse(user: &User) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    if let Some(g) = gender_id(user.gender) {
        m.insert("gender".to_string(), g);
    }
    m.insert("age".to_string(), age_bucket(user.age));
    if let Some(o) = occupation_id(&user.occupation) {
        m.insert("occupation".to_string(), o);
    }
    m
}

/// Ratings 1..=5 → `dislike`, `impression`, `click`, `like`, `love`.
pub fn action_for_rating(rating: u8) -> &'static str {
    ACTIONS[(rating.clamp(1, 5) - 1) as usize]
}

impl MovieLens {
    /// Loads `dir/ml-100k.inter`, `dir/ml-100k.user` and, when present, `dir/ml-100k.item`. Ratings of
    /// users missing from the user file are an error.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "MovieLens data directory {} not found; run scripts/fetch-data.sh to download it",
                dir.display()
            );
        }
        let ratings = load_inter(&dir.join("ml-100k.inter"))?;
        let users = load_users(&dir.join("ml-100k.user"))?;
        let item_path = dir.join("ml-100k.item");
        let items = if item_path.exists() { load_items(&item_path)? } else { BTreeMap::new() };
        if let Some(r) = ratings.iter().find(|r| !users.contains_key(&r.user_id)) {
            bail!("ml-100k.inter: user {} has ratings but is not in ml-100k.user", r.user_id);
        }
        Ok(MovieLens { ratings, users, items })
    }

    /// Every user's ratings sorted by `(timestamp, item_id)` (a deterministic order for ties).
    pub fn ratings_by_user(&self) -> BTreeMap<u64, Vec<Rating>> {
        let mut by_user: BTreeMap<u64, Vec<Rating>> = BTreeMap::new();
        for r in &self.ratings {
            by_user.entry(r.user_id).or_default().push(*r);
        }
        for v in by_user.values_mut() {
            v.sort_by_key(|r| (r.timestamp, r.item_id));
        }
        by_user
    }

    /// The item catalog: ids from `ml-100k.item` when loaded, else every rated item; sorted.
    pub fn item_ids(&self) -> Vec<u64> {
        if !self.items.is_empty() {
            return self.items.keys().copied().collect();
        }
        let mut ids: Vec<u64> = self.ratings.iter().map(|r| r.item_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// A RecBole atomic file: header column names (types stripped) and the data rows.
struct Table {
    path: PathBuf,
    name: String,
    columns: HashMap<String, usize>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path) -> Result<Table> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("reading {} (run scripts/fetch-data.sh to download MovieLens-100K)", path.display())
        })?;
        let mut lines = text.lines().enumerate();
        let (_, header) =
            lines.next().ok_or_else(|| anyhow!("{name}: empty file, expected a header line"))?;
        let columns = header
            .split('\t')
            .enumerate()
            .map(|(i, c)| (c.split(':').next().unwrap_or("").trim().to_string(), i))
            .collect();
        let rows = lines
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i + 1, l.split('\t').map(|s| s.trim().to_string()).collect()))
            .collect();
        Ok(Table { path: path.to_path_buf(), name, columns, rows })
    }

    fn col(&self, name: &str) -> Result<usize> {
        self.columns
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("{} ({}): header has no column '{name}'", self.name, self.path.display()))
    }

    fn field<'a>(&self, line: usize, row: &'a [String], col: usize, what: &str) -> Result<&'a str> {
        row.get(col).map(String::as_str).ok_or_else(|| {
            anyhow!("{} line {line}: missing field '{what}' (row has {} fields)", self.name, row.len())
        })
    }

    fn parse<T: std::str::FromStr>(&self, line: usize, row: &[String], col: usize, what: &str) -> Result<T> {
        let s = self.field(line, row, col, what)?;
        s.parse().map_err(|_| anyhow!("{} line {line}: bad {what} '{s}'", self.name))
    }
}

fn load_inter(path: &Path) -> Result<Vec<Rating>> {
    let t = Table::read(path)?;
    let (cu, ci, cr, ct) = (t.col("user_id")?, t.col("item_id")?, t.col("rating")?, t.col("timestamp")?);
    let mut out = Vec::with_capacity(t.rows.len());
    for (line, row) in &t.rows {
        let rating: f64 = t.parse(*line, row, cr, "rating")?;
        if !(1.0..=5.0).contains(&rating) || rating.fract() != 0.0 {
            bail!("{} line {line}: rating {rating} is not an integer in 1..=5", t.name);
        }
        let ts: f64 = t.parse(*line, row, ct, "timestamp")?;
        if !ts.is_finite() || ts < 0.0 {
            bail!("{} line {line}: bad timestamp {ts}", t.name);
        }
        out.push(Rating {
            user_id: t.parse(*line, row, cu, "user_id")?,
            item_id: t.parse(*line, row, ci, "item_id")?,
            rating: rating as u8,
            timestamp: ts as i64,
        });
    }
    if out.is_empty() {
        bail!("{}: no ratings", t.name);
    }
    Ok(out)
}

fn load_users(path: &Path) -> Result<BTreeMap<u64, User>> {
    let t = Table::read(path)?;
    let (cu, ca, cg, co, cz) =
        (t.col("user_id")?, t.col("age")?, t.col("gender")?, t.col("occupation")?, t.col("zip_code")?);
    let mut out = BTreeMap::new();
    for (line, row) in &t.rows {
        let user_id: u64 = t.parse(*line, row, cu, "user_id")?;
        let gender = t.field(*line, row, cg, "gender")?;
        let gender = match gender {
            "M" | "F" => gender.chars().next().unwrap_or('M'),
            other => bail!("{} line {line}: bad gender '{other}', expected M or F", t.name),
        };
        let user = User {
            user_id,
            age: t.parse(*line, row, ca, "age")?,
            gender,
            occupation: t.field(*line, row, co, "occupation")?.to_string(),
            zip_code: t.field(*line, row, cz, "zip_code")?.to_string(),
        };
        if out.insert(user_id, user).is_some() {
            bail!("{} line {line}: duplicate user_id {user_id}", t.name);
        }
    }
    Ok(out)
}

fn load_items(path: &Path) -> Result<BTreeMap<u64, Item>> {
    let t = Table::read(path)?;
    let ci = t.col("item_id")?;
    let (ct, cy, cc) = (t.columns.get("movie_title"), t.columns.get("release_year"), t.columns.get("class"));
    let mut out = BTreeMap::new();
    for (line, row) in &t.rows {
        let item_id: u64 = t.parse(*line, row, ci, "item_id")?;
        let get = |c: Option<&usize>| c.and_then(|&c| row.get(c)).map(String::as_str).unwrap_or("");
        let item = Item {
            item_id,
            title: get(ct).to_string(),
            year: get(cy).parse().ok(),
            genres: get(cc).split_whitespace().map(str::to_string).collect(),
        };
        if out.insert(item_id, item).is_some() {
            bail!("{} line {line}: duplicate item_id {item_id}", t.name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_ids() {
        assert_eq!(age_bucket(7), 0);
        assert_eq!(age_bucket(18), 1);
        assert_eq!(age_bucket(34), 2);
        assert_eq!(age_bucket(49), 4);
        assert_eq!(age_bucket(73), 6);
        assert_eq!(occupation_id("writer"), Some(20));
        assert_eq!(occupation_id("astronaut"), None);
        assert_eq!(action_for_rating(4), "like");
    }

    #[test]
    fn errors_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("slate-ml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("ml-100k.inter"),
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\t3\t100\n1\t3\tx\t101\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("ml-100k.user"),
            "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t30\tM\twriter\t1\n",
        )
        .unwrap();
        let err = format!("{:#}", MovieLens::load(&dir).unwrap_err());
        assert!(err.contains("ml-100k.inter line 3") && err.contains("'x'"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
