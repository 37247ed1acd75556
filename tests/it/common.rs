//! Shared helpers for the fixture-driven tests: discovery, tensor files, tolerances, backend choice.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use opt::backend::{self, BackendKind, BackendTask};
use serde_json::Value;

/// A fixture root: `$var`, else `default` relative to the workspace root.
pub fn fixture_root(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(default))
}

/// The fixture folders of a colon-separated list in `var` (default: `defaults`, relative to the
/// crate): several sets of the same layout are checked alike.
pub fn fixture_roots(var: &str, defaults: &[&str]) -> Vec<PathBuf> {
    match std::env::var(var) {
        Ok(list) => list
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        Err(_) => defaults
            .iter()
            .map(|d| Path::new(env!("CARGO_MANIFEST_DIR")).join(d))
            .collect(),
    }
}

/// Every fixture folder (one holding `expected.json`) under `$OPT_HF_FIXTURES` whose `kind` matches.
/// Panics when there is none: a parity test that checks nothing must not pass.
pub fn fixture_dirs(kind: &str) -> Vec<PathBuf> {
    let root = fixture_root("OPT_HF_FIXTURES", "../shared/fixtures/hf-opt");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read fixture root {} (set OPT_HF_FIXTURES): {e}",
                root.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .filter(|p| Expected::json(p)["kind"] == kind)
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no `{kind}` fixture folder found under {}",
        root.display()
    );
    dirs
}

/// A fixture folder's `expected.json` and its tensors (as f64, any stored dtype).
pub struct Expected {
    pub dir: PathBuf,
    pub json: Value,
}

/// A tensor read from a fixture: shape and values.
pub struct Stored {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Expected {
    pub fn load(dir: &Path) -> Self {
        Self {
            dir: dir.into(),
            json: Self::json(dir),
        }
    }

    fn json(dir: &Path) -> Value {
        let path = dir.join("expected.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The fixture's name (its folder).
    pub fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into()
    }

    /// The `(atol, rtol)` of `tolerances.<key>`.
    pub fn tol(&self, key: &str) -> Tol {
        let t = &self.json["tolerances"][key];
        Tol {
            atol: t["atol"]
                .as_f64()
                .unwrap_or_else(|| panic!("{}: no tolerances.{key}.atol", self.name())),
            rtol: t["rtol"].as_f64().unwrap_or(0.0),
        }
    }
}

/// Read every tensor of a safetensors file as f64.
pub fn read_tensors(path: &Path) -> HashMap<String, Stored> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            use safetensors::Dtype as D;
            let b = view.data();
            let values: Vec<f64> = match view.dtype() {
                D::F32 => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                D::F64 => b
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                D::I64 => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                D::I32 => b
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                D::F16 => b
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
                D::BF16 => b
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
                d => panic!("{}: tensor {name}: dtype {d:?} not handled", path.display()),
            };
            (
                name,
                Stored {
                    shape: view.shape().to_vec(),
                    values,
                },
            )
        })
        .collect()
}

/// |actual - expected| <= atol + rtol * |expected|.
#[derive(Debug, Clone, Copy)]
pub struct Tol {
    pub atol: f64,
    pub rtol: f64,
}

/// Compare element-wise where `keep` (if given) is true; panic naming the worst element on failure.
/// Returns the largest absolute difference seen.
pub fn assert_close(
    what: &str,
    actual: &[f64],
    expected: &[f64],
    tol: Tol,
    keep: Option<&[bool]>,
) -> f64 {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} vs expected {}",
        actual.len(),
        expected.len()
    );
    let mut max_diff = 0.0f64;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if keep.is_some_and(|k| !k[i]) {
            continue;
        }
        let d = (a - e).abs();
        assert!(a.is_finite(), "{what}[{i}] is {a}");
        max_diff = max_diff.max(d);
        if d > tol.atol + tol.rtol * e.abs() && worst.is_none_or(|(_, w)| d > w) {
            worst = Some((i, d));
        }
    }
    if let Some((i, d)) = worst {
        panic!(
            "{what}: element {i} differs by {d:e} (actual {}, expected {}; atol {}, rtol {})",
            actual[i], expected[i], tol.atol, tol.rtol
        );
    }
    max_diff
}

/// JSON array of arrays of integers -> rows.
pub fn int_rows(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

/// Run a test body on the backend named by `OPT_BACKEND` (default flex).
pub fn on_backend<T: BackendTask>(task: T) -> T::Output {
    let kind = BackendKind::from_env().expect("OPT_BACKEND");
    eprintln!("backend: {kind}");
    backend::run(kind, task).unwrap_or_else(|e| panic!("{e}"))
}

/// Burn's CPU RNGs are process-global: tests that seed and draw hold this lock.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
