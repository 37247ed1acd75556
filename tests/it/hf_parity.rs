//! Forward parity with Hugging Face `transformers` on every `forward` fixture under `$OPT_HF_FIXTURES`:
//! logits (unpadded and left-padded), log-sum-exp, argmax, hidden states and mean LM loss.

use crate::common::{
    assert_close, fixture_dirs, int_rows, on_backend, read_tensors, Expected, Stored,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::{checkpoint, loss, Opt};
use opt::BackendTask;
use std::collections::HashMap;

struct ForwardParity;

impl BackendTask for ForwardParity {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in fixture_dirs("forward") {
            let expected = Expected::load(&dir);
            let model = checkpoint::load_pretrained::<B::InnerBackend>(&dir, &device)
                .unwrap_or_else(|e| panic!("{e}"));
            let tensors = read_tensors(&dir.join("expected.safetensors"));
            for batch in ["unpadded", "padded"] {
                check_batch(&model, &expected, &tensors, batch, &device);
            }
        }
    }
}

fn check_batch<B: Backend>(
    model: &Opt<B>,
    expected: &Expected,
    tensors: &HashMap<String, Stored>,
    batch: &str,
    device: &B::Device,
) {
    let name = expected.name();
    let inputs = &expected.json["inputs"][batch];
    let ids = int_rows(&inputs["input_ids"]);
    let (b, t) = (ids.len(), ids[0].len());
    let to_tensor = |rows: &[Vec<i64>]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(rows.concat(), [b, t]), device)
    };
    let mask_rows = inputs.get("attention_mask").map(int_rows);
    let mask = mask_rows.as_deref().map(to_tensor);
    let out = model.forward_full(to_tensor(&ids), mask, None, true);
    // Compare only real-token positions (pad queries are implementation-defined garbage).
    let valid: Vec<bool> = match &mask_rows {
        Some(m) => m.concat().iter().map(|&x| x == 1).collect(),
        None => vec![true; b * t],
    };
    let expand = |per_pos: &[bool], width: usize| -> Vec<bool> {
        per_pos
            .iter()
            .flat_map(|&k| std::iter::repeat_n(k, width))
            .collect()
    };
    let get = |key: &str| {
        tensors
            .get(&format!("{batch}.{key}"))
            .unwrap_or_else(|| panic!("{name}: no tensor {batch}.{key}"))
    };
    let report = |what: &str, diff: f64| println!("{name} {batch} {what}: max |diff| = {diff:.3e}");

    // Logits at the stored columns.
    let cols: Vec<i64> = tensors["logit_cols"]
        .values
        .iter()
        .map(|&c| c as i64)
        .collect();
    let k = cols.len();
    let col_idx = Tensor::<B, 1, Int>::from_data(TensorData::new(cols, [k]), device);
    let at_cols = values(out.logits.clone().select(2, col_idx));
    let diff = assert_close(
        &format!("{name} {batch}.logits.at_cols"),
        &at_cols,
        &get("logits.at_cols").values,
        expected.tol("logits"),
        Some(&expand(&valid, k)),
    );
    report("logits", diff);

    // Log-sum-exp and argmax over the full vocabulary.
    let v = out.logits.dims()[2];
    let max = out.logits.clone().max_dim(2);
    let lse = values(
        (out.logits.clone() - max.clone())
            .exp()
            .sum_dim(2)
            .log()
            .add(max)
            .reshape([b * t]),
    );
    let diff = assert_close(
        &format!("{name} {batch}.logits.lse"),
        &lse,
        &get("logits.lse").values,
        expected.tol("logits_lse"),
        Some(&valid),
    );
    report("logsumexp", diff);
    let argmax = values(out.logits.clone().argmax(2).float().reshape([b * t]));
    let min_margin = expected.json["tolerances"]["argmax_min_margin"]
        .as_f64()
        .unwrap();
    let margin = &get("logits.margin").values;
    for (i, (&a, &e)) in argmax.iter().zip(&get("logits.argmax").values).enumerate() {
        if valid[i] && margin[i] > min_margin {
            assert_eq!(
                a, e,
                "{name} {batch}: argmax at position {i} (margin {}), vocab {v}",
                margin[i]
            );
        }
    }

    // Hidden states: embeddings, each layer, and the LM head's input.
    let hidden_tol = expected.tol("hidden");
    let mut hidden_max = 0.0f64;
    for (i, h) in out.hidden_states.iter().enumerate() {
        let key = if i == 0 {
            "hidden.embeddings".to_string()
        } else {
            format!("hidden.layer_{}", i - 1)
        };
        let width = h.dims()[2];
        hidden_max = hidden_max.max(assert_close(
            &format!("{name} {batch}.{key}"),
            &values(h.clone()),
            &get(&key).values,
            hidden_tol,
            Some(&expand(&valid, width)),
        ));
    }
    let width = out.last_hidden_state.dims()[2];
    hidden_max = hidden_max.max(assert_close(
        &format!("{name} {batch}.last_hidden_state"),
        &values(out.last_hidden_state.clone()),
        &get("last_hidden_state").values,
        hidden_tol,
        Some(&expand(&valid, width)),
    ));
    report("hidden states", hidden_max);

    // Mean LM loss with HF's labels (padded: pads and each row's first real token are -100).
    let labels = match inputs.get("labels") {
        Some(l) => int_rows(l),
        None => ids.clone(),
    };
    let loss = loss::causal_lm_loss(out.logits, to_tensor(&labels))
        .into_scalar()
        .elem::<f64>();
    let want = expected.json["loss"][batch].as_f64().unwrap();
    let diff = assert_close(
        &format!("{name} {batch}.loss"),
        &[loss],
        &[want],
        expected.tol("loss"),
        None,
    );
    report("loss", diff);
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

#[test]
fn forward_matches_transformers() {
    on_backend(ForwardParity);
}
