//! Greedy generation parity with HF `generate()` (batched left-padded and unbatched), and
//! KV-cache equivalence, for every `forward` fixture under `$OPT_HF_FIXTURES`.

use crate::common::{
    assert_close, fixture_dirs, int_rows, on_backend, read_tensors, Expected, Stored,
};
use burn::tensor::backend::AutodiffBackend;
use opt::model::generate::{generate, GenerateConfig, Generation};
use opt::model::{checkpoint, Opt};
use opt::BackendTask;
use std::collections::HashMap;

struct GenerationParity;

impl BackendTask for GenerationParity {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in fixture_dirs("forward") {
            let expected = Expected::load(&dir);
            let name = expected.name();
            let model = checkpoint::load_pretrained::<B::InnerBackend>(&dir, &device).unwrap();
            let tensors = read_tensors(&dir.join("expected.safetensors"));
            let g = &expected.json["generation"];
            let prompts: Vec<Vec<u32>> = int_rows(&g["prompts"])
                .into_iter()
                .map(|r| r.into_iter().map(|x| x as u32).collect())
                .collect();
            let config = GenerateConfig {
                max_new_tokens: g["max_new_tokens"].as_u64().unwrap() as usize,
                eos_token_id: Some(g["eos_token_id"].as_u64().unwrap() as u32),
                pad_token_id: g["pad_token_id"].as_u64().unwrap() as u32,
                keep_logits: true,
                ..Default::default()
            };
            let cols: Vec<usize> = tensors["logit_cols"]
                .values
                .iter()
                .map(|&c| c as usize)
                .collect();

            // Batched, left-padded.
            let want = int_rows(&g["batched"]["new_tokens"]);
            for use_cache in [true, false] {
                let cfg = GenerateConfig {
                    use_cache,
                    ..config.clone()
                };
                let got = generate(&model, &prompts, &cfg, |_| {}).unwrap();
                assert_tokens(&name, "batched", &got, &want);
                let d = check_logits(&expected, &tensors, "batched", &got, &cols);
                println!("{name} batched (cache {use_cache}): tokens exact, step logits max |diff| = {d:.3e}");
            }
            // Each prompt alone.
            for (j, prompt) in prompts.iter().enumerate() {
                let want = vec![g["unbatched"][j]["new_tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()];
                let got = generate(&model, std::slice::from_ref(prompt), &config, |_| {}).unwrap();
                let run = format!("unbatched_{j}");
                assert_tokens(&name, &run, &got, &want);
                let d = check_logits(&expected, &tensors, &run, &got, &cols);
                println!("{name} {run}: tokens exact, step logits max |diff| = {d:.3e}");
            }
            cache_equivalence(&model, &prompts, &config);
        }
    }
}

fn assert_tokens(name: &str, run: &str, got: &Generation, want: &[Vec<i64>]) {
    for (r, w) in want.iter().enumerate() {
        let got: Vec<i64> = got.new_tokens[r].iter().map(|&x| x as i64).collect();
        assert_eq!(&got, w, "{name} {run}: row {r} new tokens");
    }
}

/// Compare every step's logits at the stored columns; returns the max |diff|.
fn check_logits(
    expected: &Expected,
    tensors: &HashMap<String, Stored>,
    run: &str,
    got: &Generation,
    cols: &[usize],
) -> f64 {
    let want = &tensors[&format!("gen.{run}.step_logits.at_cols")].values;
    let actual: Vec<f64> = got
        .step_logits
        .iter()
        .flat_map(|rows| {
            rows.iter()
                .flat_map(|row| cols.iter().map(|&c| row[c] as f64))
        })
        .collect();
    let n = actual.len().min(want.len());
    assert_eq!(actual.len(), want.len(), "{run}: number of step logits");
    assert_close(
        &format!("{} gen.{run}.step_logits", expected.name()),
        &actual[..n],
        &want[..n],
        expected.tol("logits"),
        None,
    )
}

/// With and without the KV cache: identical greedy tokens and logits within 1e-4.
fn cache_equivalence<B: burn::prelude::Backend>(
    model: &Opt<B>,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) {
    let cached = generate(model, prompts, config, |_| {}).unwrap();
    let uncached = generate(
        model,
        prompts,
        &GenerateConfig {
            use_cache: false,
            ..config.clone()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(cached.new_tokens, uncached.new_tokens);
    let flat = |g: &Generation| -> Vec<f64> {
        g.step_logits
            .iter()
            .flatten()
            .flatten()
            .map(|&x| x as f64)
            .collect()
    };
    let d = assert_close(
        "cache vs no cache",
        &flat(&cached),
        &flat(&uncached),
        crate::common::Tol {
            atol: 1e-4,
            rtol: 0.0,
        },
        None,
    );
    println!("KV cache vs full recompute: max |diff| = {d:.3e}");
}

#[test]
fn greedy_generation_matches_transformers() {
    on_backend(GenerationParity);
}
