//! metaseq import on every `metaseq_import` fixture under `$OPT_METASEQ_FIXTURES`: the derived
//! config, every weight vs the HF fixture rounded to the checkpoint's dtype, and the logits
//! (unpadded and left-padded) of the written-and-reloaded HF directory vs the HF fixture and,
//! for float16 checkpoints, the folder's own reference; plus an error naming the file for each
//! kind of bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::{assert_close, int_rows, on_backend, read_tensors, Expected, Stored, Tol};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::metaseq::{self, MetaseqCheckpoint, MetaseqError};
use opt::model::Precision;
use opt::model::{checkpoint, loss, Opt};
use opt::BackendTask;
use serde_json::Value;

/// The metaseq fixture set: `$OPT_METASEQ_FIXTURES`, default `../shared/fixtures/metaseq`.
fn set_root() -> PathBuf {
    crate::common::fixture_root("OPT_METASEQ_FIXTURES", "../shared/fixtures/metaseq")
}

/// Every `metaseq_import` folder of the set. Panics when there is none.
fn metaseq_dirs() -> Vec<PathBuf> {
    let root = set_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read {} (set OPT_METASEQ_FIXTURES): {e}",
                root.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected.json").is_file())
        .filter(|p| Expected::load(p).json["kind"] == "metaseq_import")
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no `metaseq_import` fixture folder under {}",
        root.display()
    );
    dirs
}

/// A folder's checkpoint files, in part order.
fn files(expected: &Expected) -> Vec<PathBuf> {
    expected.json["files"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no `files` list", expected.name()))
        .iter()
        .map(|f| expected.dir.join(f.as_str().unwrap()))
        .collect()
}

/// The HF fixture folder (`hf_fixture` is relative to the set folder).
fn hf_dir(expected: &Expected) -> PathBuf {
    let rel = expected.json["hf_fixture"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no `hf_fixture`", expected.name()));
    expected.dir.parent().unwrap().join(rel)
}

/// Whether the checkpoint is float32 (else float16: compared with its own reference too).
fn is_f32(expected: &Expected) -> bool {
    expected.json["dtype"] == "float32"
}

struct ImportParity;

impl BackendTask for ImportParity {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in metaseq_dirs() {
            let expected = Expected::load(&dir);
            let ckpt = metaseq::import(&files(&expected), None).unwrap_or_else(|e| panic!("{e}"));
            let hf = Expected::load(&hf_dir(&expected));
            check_config(&expected, &ckpt);
            check_weights(&expected, &ckpt, &hf);
            let out = tempfile::tempdir().unwrap();
            metaseq::write_hf_dir(&ckpt, out.path(), ckpt.dtype).unwrap_or_else(|e| panic!("{e}"));
            let model = checkpoint::load_pretrained::<B::InnerBackend>(out.path(), &device)
                .unwrap_or_else(|e| panic!("{}: {e}", expected.name()));
            for batch in ["unpadded", "padded"] {
                check_batch(&model, &expected, &hf, batch, &device);
            }
        }
    }
}

#[test]
fn metaseq_import_matches_hf() {
    on_backend(ImportParity);
}

/// The derived config equals `expected_hf_config` on its fields; dtype and part count match.
fn check_config(expected: &Expected, ckpt: &MetaseqCheckpoint) {
    let name = expected.name();
    let ours: Value = serde_json::from_str(&ckpt.config.to_json()).unwrap();
    let want = expected.json["expected_hf_config"]
        .as_object()
        .unwrap_or_else(|| panic!("{name}: no expected_hf_config"));
    for (key, value) in want {
        assert_eq!(&ours[key], value, "{name}: config field `{key}`");
    }
    assert!(
        expected.json["dtype"] == ckpt.dtype.torch_name(),
        "{name}: dtype {} vs expected {}",
        ckpt.dtype.torch_name(),
        expected.json["dtype"]
    );
    assert_eq!(
        Some(ckpt.files.len() as u64),
        expected.json["model_parallel_parts"].as_u64(),
        "{name}: parts"
    );
}

/// Every HF tensor equals the HF fixture's, rounded to the checkpoint's dtype, bit for bit.
fn check_weights(expected: &Expected, ckpt: &MetaseqCheckpoint, hf: &Expected) {
    let name = expected.name();
    let reference = read_tensors(&hf.dir.join("model.safetensors"));
    let ours: Vec<&String> = ckpt.tensors.keys().collect();
    let mut theirs: Vec<&String> = reference.keys().collect();
    theirs.sort();
    assert_eq!(ours, theirs, "{name}: tensor names");
    for (key, stored) in &reference {
        let tensor = &ckpt.tensors[key];
        assert_eq!(tensor.shape, stored.shape, "{name}: `{key}` shape");
        for (i, (a, &e)) in tensor.to_f32().iter().zip(&stored.values).enumerate() {
            let want = round_to(e as f32, ckpt.dtype);
            assert_eq!(
                a.to_bits(),
                want.to_bits(),
                "{name}: `{key}`[{i}] = {a}, HF fixture rounded to {}: {want}",
                ckpt.dtype
            );
        }
    }
}

/// `v` rounded to `dtype` (nearest even, as torch's `.to()`) and back to float32.
fn round_to(v: f32, dtype: Precision) -> f32 {
    match dtype {
        Precision::F32 => v,
        Precision::F16 => half::f16::from_f32(v).to_f32(),
        Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
    }
}

/// One batch's outputs, at real-token positions only.
struct Run<B: Backend> {
    logits: Tensor<B, 3>,
    valid: Vec<bool>,
    loss: f64,
}

/// Tolerances of one comparison (`None`: not compared).
struct Tols {
    logits: Tol,
    lse: Option<Tol>,
    loss: Option<Tol>,
}

/// Logits of `batch` (HF fixture inputs) vs the HF fixture, and (float16) vs the folder's own.
fn check_batch<B: Backend>(
    model: &Opt<B>,
    expected: &Expected,
    hf: &Expected,
    batch: &str,
    device: &B::Device,
) {
    let name = expected.name();
    let run = forward(model, hf, batch, device);
    let min_margin = hf.json["tolerances"]["argmax_min_margin"].as_f64().unwrap();
    // float32: the imported model is the HF fixture model, so its own checks and tolerances apply.
    let vs_hf = Tols {
        logits: expected.tol("vs_hf_fixture_logits"),
        lse: is_f32(expected).then(|| hf.tol("logits_lse")),
        loss: is_f32(expected).then(|| hf.tol("loss")),
    };
    let hf_ref = read_tensors(&hf.dir.join("expected.safetensors"));
    let what = format!("{name} {batch} vs HF fixture");
    let d_hf = compare(&run, &hf_ref, batch, &vs_hf, min_margin, &what, device);
    let mut line = format!("{name} {batch}: max |logit diff| vs HF fixture = {d_hf:.3e}");
    if !is_f32(expected) {
        let own = Tols {
            logits: expected.tol("vs_own_reference_logits"),
            lse: Some(expected.tol("vs_own_reference_lse")),
            loss: Some(hf.tol("loss")),
        };
        let own_ref = read_tensors(&expected.dir.join("expected.safetensors"));
        let what = format!("{name} {batch} vs own reference");
        let d_own = compare(&run, &own_ref, batch, &own, min_margin, &what, device);
        line.push_str(&format!(", vs own reference = {d_own:.3e}"));
    }
    println!("{line}");
}

/// Run the model on the HF fixture's `batch` inputs.
fn forward<B: Backend>(model: &Opt<B>, hf: &Expected, batch: &str, device: &B::Device) -> Run<B> {
    let inputs = &hf.json["inputs"][batch];
    let ids = int_rows(&inputs["input_ids"]);
    let (b, t) = (ids.len(), ids[0].len());
    let to_tensor = |rows: &[Vec<i64>]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(rows.concat(), [b, t]), device)
    };
    let mask_rows = inputs.get("attention_mask").map(int_rows);
    let logits = model.forward(to_tensor(&ids), mask_rows.as_deref().map(to_tensor), None);
    // Padded batches: labels with pads and each row's first real token set to -100 (HF fixture).
    let labels = inputs.get("labels").map_or_else(|| ids.clone(), int_rows);
    let loss = loss::causal_lm_loss(logits.clone(), to_tensor(&labels))
        .into_scalar()
        .elem::<f64>();
    let valid = match &mask_rows {
        Some(m) => m.concat().iter().map(|&x| x == 1).collect(),
        None => vec![true; b * t],
    };
    Run {
        logits,
        valid,
        loss,
    }
}

/// Compare logits at `logit_cols`, log-sum-exp, argmax (where the margin is clear) and loss with
/// `reference`'s `<batch>.*`; returns the largest |logit difference|.
fn compare<B: Backend>(
    run: &Run<B>,
    reference: &HashMap<String, Stored>,
    batch: &str,
    tols: &Tols,
    min_margin: f64,
    what: &str,
    device: &B::Device,
) -> f64 {
    let get = |key: &str| {
        &reference
            .get(&format!("{batch}.{key}"))
            .unwrap_or_else(|| panic!("{what}: no tensor {batch}.{key}"))
            .values
    };
    let cols: Vec<i64> = reference["logit_cols"]
        .values
        .iter()
        .map(|&c| c as i64)
        .collect();
    let k = cols.len();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(cols, [k]), device);
    let at_cols = values(run.logits.clone().select(2, idx));
    let keep: Vec<bool> = run
        .valid
        .iter()
        .flat_map(|&v| std::iter::repeat_n(v, k))
        .collect();
    let what_logits = format!("{what}: logits.at_cols");
    let diff = assert_close(
        &what_logits,
        &at_cols,
        get("logits.at_cols"),
        tols.logits,
        Some(&keep),
    );
    if let Some(tol) = tols.lse {
        let lse = values(logsumexp(run.logits.clone()));
        assert_close(
            &format!("{what}: logits.lse"),
            &lse,
            get("logits.lse"),
            tol,
            Some(&run.valid),
        );
    }
    // Logits within atol of the reference can only swap top-1 and top-2 within 2 * atol.
    let min_margin = min_margin.max(2.0 * tols.logits.atol);
    check_argmax(
        run,
        get("logits.argmax"),
        get("logits.margin"),
        min_margin,
        what,
    );
    if let Some(tol) = tols.loss {
        assert_close(
            &format!("{what}: loss"),
            &[run.loss],
            get("loss"),
            tol,
            None,
        );
    }
    diff
}

/// Argmax equality at real-token positions whose stored top-1/top-2 margin exceeds `min_margin`.
fn check_argmax<B: Backend>(
    run: &Run<B>,
    want: &[f64],
    margin: &[f64],
    min_margin: f64,
    what: &str,
) {
    let [b, t, _] = run.logits.dims();
    let ours = values(run.logits.clone().argmax(2).float().reshape([b * t]));
    for (i, (&a, &e)) in ours.iter().zip(want).enumerate() {
        if run.valid[i] && margin[i] > min_margin {
            assert_eq!(
                a, e,
                "{what}: argmax at position {i} (margin {})",
                margin[i]
            );
        }
    }
}

/// Log-sum-exp over the vocabulary, flattened to [b * t].
fn logsumexp<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 1> {
    let [b, t, _] = logits.dims();
    let max = logits.clone().max_dim(2);
    (logits - max.clone())
        .exp()
        .sum_dim(2)
        .log()
        .add(max)
        .reshape([b * t])
}

/// A tensor's values as f64.
fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Writing, part order and bad input (no backend involved).

/// The fixtures with at least two model-parallel parts.
fn mp_fixtures() -> Vec<Expected> {
    metaseq_dirs()
        .iter()
        .map(|d| Expected::load(d))
        .filter(|e| e.json["model_parallel_parts"].as_u64().unwrap_or(0) >= 2)
        .collect()
}

/// Import `paths`, which must fail.
fn import_err(paths: &[PathBuf]) -> MetaseqError {
    match metaseq::import(paths, None) {
        Ok(_) => panic!("importing {paths:?} should fail"),
        Err(e) => e,
    }
}

/// Assert `message` names `path`.
fn assert_names(message: &str, path: &Path) {
    assert!(
        message.contains(&path.display().to_string()),
        "the error should name {}: {message}",
        path.display()
    );
}

#[test]
fn metaseq_writes_each_dtype() {
    let expected = Expected::load(&metaseq_dirs()[0]);
    let ckpt = metaseq::import(&files(&expected), None).unwrap_or_else(|e| panic!("{e}"));
    for dtype in [Precision::F32, Precision::F16, Precision::Bf16] {
        let out = tempfile::tempdir().unwrap();
        metaseq::write_hf_dir(&ckpt, out.path(), dtype).unwrap_or_else(|e| panic!("{e}"));
        let written = read_tensors(&out.path().join("model.safetensors"));
        assert_eq!(written.len(), ckpt.tensors.len(), "{dtype}: tensor count");
        for (key, tensor) in &ckpt.tensors {
            let got = &written[key];
            assert_eq!(got.shape, tensor.shape, "{dtype}: `{key}` shape");
            for (i, (&g, &v)) in got.values.iter().zip(&tensor.to_f32()).enumerate() {
                let want = round_to(v, dtype);
                assert_eq!(g as f32, want, "{dtype}: `{key}`[{i}]");
            }
        }
        let config = std::fs::read_to_string(out.path().join("config.json")).unwrap();
        let config: Value = serde_json::from_str(&config).unwrap();
        assert!(
            config["torch_dtype"] == dtype.torch_name(),
            "{dtype}: {config}"
        );
    }
}

#[test]
fn metaseq_part_order_does_not_matter() {
    let expected = mp_fixtures()
        .into_iter()
        .next()
        .expect("a model-parallel fixture");
    let mut paths = files(&expected);
    let ordered = metaseq::import(&paths, None).unwrap_or_else(|e| panic!("{e}"));
    paths.reverse();
    let reversed = metaseq::import(&paths, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ordered.tensors, reversed.tensors);
    assert_eq!(ordered.files, reversed.files);
}

#[test]
fn metaseq_missing_part_is_named() {
    let expected = mp_fixtures()
        .into_iter()
        .next()
        .expect("a model-parallel fixture");
    let paths = files(&expected);
    // Only the last part: part 0 is missing.
    let last = paths.last().unwrap();
    let err = import_err(std::slice::from_ref(last));
    let message = err.to_string();
    assert!(matches!(err, MetaseqError::Parts { .. }), "{message}");
    assert_names(&message, last);
    let first_name = paths[0].file_name().unwrap().to_str().unwrap();
    assert!(
        message.contains(first_name),
        "should name the missing {first_name}: {message}"
    );
    // Only part 0: its siblings are in the same folder.
    let err = import_err(&paths[..1]);
    let message = err.to_string();
    assert!(matches!(err, MetaseqError::Parts { .. }), "{message}");
    assert_names(&message, &paths[0]);
}

#[test]
fn metaseq_parts_of_two_models_are_refused() {
    let mp = mp_fixtures();
    let a = &mp[0];
    let b = mp
        .iter()
        .find(|e| {
            e.json["hf_fixture"] != a.json["hf_fixture"] && e.json["dtype"] == a.json["dtype"]
        })
        .expect("two model-parallel fixtures of different models and one dtype");
    let mixed = vec![files(a)[0].clone(), files(b)[1].clone()];
    let err = import_err(&mixed);
    let message = err.to_string();
    assert!(matches!(err, MetaseqError::Mismatch { .. }), "{message}");
    assert_names(&message, &mixed[0]);
    assert_names(&message, &mixed[1]);
}

#[test]
fn metaseq_non_checkpoints_are_named() {
    let dir = metaseq_dirs().remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "hello, not a checkpoint\n").unwrap();
    let hf_weights = hf_dir(&Expected::load(&dir)).join("model.safetensors");
    let absent = tmp.path().join("absent.pt");
    for path in [dir.join("expected.json"), text, hf_weights, absent] {
        let err = import_err(std::slice::from_ref(&path));
        let message = err.to_string();
        assert!(
            matches!(
                err,
                MetaseqError::NotPytorch { .. }
                    | MetaseqError::NotMetaseq { .. }
                    | MetaseqError::Io { .. }
            ),
            "{message}"
        );
        assert_names(&message, &path);
    }
}

#[test]
fn metaseq_heads_override_must_agree_with_cfg() {
    let expected = Expected::load(&metaseq_dirs()[0]);
    let paths = files(&expected);
    let ckpt = metaseq::import(&paths, None).unwrap_or_else(|e| panic!("{e}"));
    let heads = ckpt.config.num_attention_heads;
    let same = metaseq::import(&paths, Some(heads)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(same.config, ckpt.config);
    let Err(err) = metaseq::import(&paths, Some(heads * 2)) else {
        panic!("--heads disagreeing with cfg was accepted");
    };
    let message = err.to_string();
    assert!(
        matches!(err, MetaseqError::HeadsMismatch { .. }),
        "{message}"
    );
    assert_names(&message, &paths[0]);
}
