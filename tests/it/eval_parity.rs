//! The perplexity path (`opt eval`'s) against transformers: fed a forward fixture's input ids as one
//! stream cut into windows of the rows' length, it must reproduce the fixture's mean loss.

use crate::common::{assert_close, fixture_dirs, int_rows, on_backend, Expected};
use burn::tensor::backend::AutodiffBackend;
use opt::eval::perplexity;
use opt::model::checkpoint;
use opt::BackendTask;

struct EvalParity;

impl BackendTask for EvalParity {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in fixture_dirs("forward") {
            let expected = Expected::load(&dir);
            let name = expected.name();
            let model = checkpoint::load_pretrained::<B::InnerBackend>(&dir, &device).unwrap();
            let rows = int_rows(&expected.json["inputs"]["unpadded"]["input_ids"]);
            let (b, t) = (rows.len(), rows[0].len());
            let stream: Vec<u32> = rows.iter().flatten().map(|&x| x as u32).collect();
            let want = expected.json["loss"]["unpadded"].as_f64().unwrap();
            // Non-overlapping windows of t tokens are exactly the fixture's rows; a stride of t
            // gives the same windows through the sliding-window code.
            for (stride, batch) in [(None, 1), (None, b), (Some(t), 2)] {
                let r = perplexity(&model, &stream, t, stride, batch, &device).unwrap();
                assert_eq!(r.windows, b, "{name}");
                assert_eq!(r.tokens as usize, b * (t - 1), "{name}: scored tokens");
                assert_eq!(r.dropped_tokens, 0);
                let d = assert_close(
                    &format!("{name} eval mean loss (stride {stride:?}, batch {batch})"),
                    &[r.mean_loss],
                    &[want],
                    expected.tol("loss"),
                    None,
                );
                assert!((r.perplexity - r.mean_loss.exp()).abs() < 1e-9 * r.perplexity);
                println!(
                    "{name}: eval mean loss {:.6} vs {want:.6} (|diff| {d:.2e})",
                    r.mean_loss
                );
            }
            // A tail shorter than a window is dropped (GPTQ) and reported.
            let r = perplexity(&model, &stream[..b * t - 3], t, None, 1, &device).unwrap();
            assert_eq!((r.windows, r.dropped_tokens), (b - 1, t - 3));
            // Sliding windows score every token after the first exactly once.
            let r = perplexity(&model, &stream, t / 2, Some(t / 4), 3, &device).unwrap();
            assert_eq!(
                r.tokens as usize,
                stream.len() - 1,
                "{name}: strided coverage"
            );
            assert!(r.mean_loss.is_finite());
            // Bad requests are errors, not panics.
            let max = model.config.max_position_embeddings;
            let e = perplexity(&model, &stream, max + 1, None, 1, &device).unwrap_err();
            assert!(e.to_string().contains("max_position_embeddings"), "{e}");
            let e = perplexity(&model, &stream, t, Some(t + 1), 1, &device).unwrap_err();
            assert!(e.to_string().contains("stride"), "{e}");
            let e = perplexity(&model, &stream[..5], t, None, 1, &device).unwrap_err();
            assert!(e.to_string().contains("fewer than one window"), "{e}");
        }
    }
}

#[test]
fn eval_path_reproduces_fixture_loss() {
    on_backend(EvalParity);
}
