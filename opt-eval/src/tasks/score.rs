//! A request's score as lm-evaluation-harness computes it: the sum of the continuation's
//! log-probabilities (log-softmax over all the model's logits, float32) and whether greedy decoding
//! would produce it.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use opt_data::tasks::{ModelInput, PlannedItem};
use opt_model::{loss, Opt};
use serde::Serialize;

/// A request's score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// Sum of the continuation tokens' log-probabilities.
    pub loglikelihood: f64,
    /// Whether every continuation token is the argmax of its position's logits.
    pub is_greedy: bool,
}

/// Scores of every planned request, grouped back per document. With `share_prefix`, a document
/// whose choices all follow one untruncated context runs that context once and its choices from
/// the KV cache; the others (WinoGrande's per-choice contexts, truncated requests) are batched
/// whole.
pub fn score_planned<B: Backend>(
    model: &Opt<B>,
    planned: &[PlannedItem],
    batch: usize,
    share_prefix: bool,
    device: &B::Device,
) -> Vec<Vec<Score>> {
    let (shared, whole): (Vec<usize>, Vec<usize>) =
        (0..planned.len()).partition(|&i| share_prefix && shares_context(&planned[i]));
    let mut scores = vec![Vec::new(); planned.len()];
    let inputs: Vec<&ModelInput> = whole.iter().flat_map(|&i| &planned[i].inputs).collect();
    let mut flat = score_requests(model, &inputs, batch, device).into_iter();
    for &i in &whole {
        scores[i] = flat.by_ref().take(planned[i].inputs.len()).collect();
    }
    for group in row_groups(&shared, planned, batch) {
        let items: Vec<&PlannedItem> = group.iter().map(|&i| &planned[i]).collect();
        for (&i, s) in group.iter().zip(score_shared(model, &items, device)) {
            scores[i] = s;
        }
    }
    scores
}

/// Whether every request of a document feeds the same untruncated context before its
/// continuation.
fn shares_context(p: &PlannedItem) -> bool {
    let first = &p.encoded[0].context_ids;
    p.inputs.len() > 1
        && p.encoded.iter().all(|e| &e.context_ids == first)
        && p.inputs
            .iter()
            .all(|i| i.truncated == 0 && i.cut_continuation == 0)
}

/// Consecutive documents whose requests add up to about `batch` rows.
fn row_groups(items: &[usize], planned: &[PlannedItem], batch: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut rows = 0;
    for &i in items {
        if groups.is_empty() || rows >= batch.max(1) {
            groups.push(Vec::new());
            rows = 0;
        }
        groups.last_mut().expect("a group").push(i);
        rows += planned[i].inputs.len();
    }
    groups
}

/// Documents that share their context across choices: the contexts left-padded in one pass that
/// fills the KV cache, then every choice (all but its last token) after its document's cached
/// context. A choice's first token is predicted by the context's last position (the last column,
/// thanks to the left padding), the others by the choice pass.
fn score_shared<B: Backend>(
    model: &Opt<B>,
    items: &[&PlannedItem],
    device: &B::Device,
) -> Vec<Vec<Score>> {
    let pad = model.config.pad_token_id as i64;
    let (b, n) = (
        items.len(),
        items.iter().map(|p| p.inputs.len()).max().unwrap_or(1),
    );
    let contexts: Vec<&[u32]> = items
        .iter()
        .map(|p| &p.encoded[0].context_ids[..])
        .collect();
    let c = contexts.iter().map(|x| x.len()).max().unwrap_or(1);
    let l = items
        .iter()
        .flat_map(|p| &p.inputs)
        .map(|i| i.continuation.len() - 1)
        .max()
        .unwrap_or(0);
    // Left-padded contexts and their mask.
    let (mut ids, mut mask) = (Vec::with_capacity(b * c), Vec::with_capacity(b * c));
    for ctx in &contexts {
        let gap = c - ctx.len();
        ids.extend(std::iter::repeat_n(pad, gap).chain(ctx.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(0i64, gap).chain(std::iter::repeat_n(1, ctx.len())));
    }
    let int2 = |v: Vec<i64>, shape: [usize; 2]| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, shape), device)
    };
    let mut cache = opt_model::KvCache::new(&model.config, b, c + l, device);
    let prefix_mask = int2(mask.clone(), [b, c]);
    let (h, _) = model.decode(
        int2(ids, [b, c]),
        Some(prefix_mask),
        Some(&mut cache),
        false,
    );
    let e = h.dims()[2];
    let mut hidden = vec![h.slice([0..b, c - 1..c]).reshape([b, e])];
    if l > 0 {
        // Row i * n + k: choice k of document i (missing choices are all pads).
        let rows: Vec<i64> = (0..b * n).map(|r| (r / n) as i64).collect();
        let mut cache =
            cache.select_rows(Tensor::from_data(TensorData::new(rows, [b * n]), device));
        let (mut ids, mut full) = (Vec::with_capacity(b * n * l), Vec::new());
        for (i, p) in items.iter().enumerate() {
            for k in 0..n {
                let fed = p
                    .inputs
                    .get(k)
                    .map_or(&[][..], |x| &x.continuation[..x.continuation.len() - 1]);
                ids.extend(
                    fed.iter()
                        .map(|&t| t as i64)
                        .chain(std::iter::repeat_n(pad, l - fed.len())),
                );
                full.extend_from_slice(&mask[i * c..(i + 1) * c]);
                full.extend(
                    std::iter::repeat_n(1i64, fed.len())
                        .chain(std::iter::repeat_n(0, l - fed.len())),
                );
            }
        }
        let full = int2(full, [b * n, c + l]);
        let (hc, _) = model.decode(int2(ids, [b * n, l]), Some(full), Some(&mut cache), false);
        hidden.push(hc.reshape([b * n * l, e]));
    }
    // Row of `hidden` that predicts token j of choice k of document i.
    let (mut at, mut targets, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in items.iter().enumerate() {
        for (k, input) in p.inputs.iter().enumerate() {
            for (j, &t) in input.continuation.iter().enumerate() {
                at.push(
                    (if j == 0 {
                        i
                    } else {
                        b + (i * n + k) * l + j - 1
                    }) as i64,
                );
                targets.push(t);
            }
            lens.push(input.continuation.len());
        }
    }
    let mut flat =
        score_positions(model, Tensor::cat(hidden, 0), at, &targets, &lens, device).into_iter();
    items
        .iter()
        .map(|p| flat.by_ref().take(p.inputs.len()).collect())
        .collect()
}

/// Score requests `batch` rows at a time, longest first; results in input order. Requests fed
/// the same tokens (one-token continuations of one context: BoolQ's " yes" and " no") share a
/// row, as lm-eval's cache of one-token continuations does: the same forward pass.
pub fn score_requests<B: Backend>(
    model: &Opt<B>,
    inputs: &[&ModelInput],
    batch: usize,
    device: &B::Device,
) -> Vec<Score> {
    let mut rows: Vec<Row> = Vec::new();
    let mut row_of: HashMap<&[u32], usize> = HashMap::new();
    for (i, input) in inputs.iter().enumerate() {
        let row = *row_of.entry(&input.tokens).or_insert_with(|| {
            rows.push(Row {
                tokens: &input.tokens,
                requests: Vec::new(),
            });
            rows.len() - 1
        });
        rows[row].requests.push((i, &input.continuation));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.tokens.len()));
    let mut scores = vec![
        Score {
            loglikelihood: 0.0,
            is_greedy: false
        };
        inputs.len()
    ];
    for chunk in rows.chunks(batch.max(1)) {
        let requests = chunk
            .iter()
            .flat_map(|r| r.requests.iter().map(|&(i, _)| i));
        for (i, score) in requests.zip(score_batch(model, chunk, device)) {
            scores[i] = score;
        }
    }
    scores
}

/// One row of a batch: the tokens fed, and the requests scored on them (index, continuation).
struct Row<'a> {
    tokens: &'a [u32],
    requests: Vec<(usize, &'a [u32])>,
}

/// One forward pass over right-padded rows (no mask needed: in a causal model a real token never
/// sees the pads after it); scores in the order of the rows' requests.
fn score_batch<B: Backend>(model: &Opt<B>, rows: &[Row], device: &B::Device) -> Vec<Score> {
    let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(1);
    let pad = model.config.pad_token_id as i64;
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|r| {
            let real = r.tokens.iter().map(|&id| id as i64);
            real.chain(std::iter::repeat_n(pad, t - r.tokens.len()))
        })
        .collect();
    // Position tokens.len() - n + j predicts continuation[j].
    let (mut at, mut targets, mut lens) = (Vec::new(), Vec::new(), Vec::new());
    for (b, r) in rows.iter().enumerate() {
        for &(_, continuation) in &r.requests {
            let first = r.tokens.len() - continuation.len();
            at.extend((0..continuation.len()).map(|j| (b * t + first + j) as i64));
            targets.extend(continuation);
            lens.push(continuation.len());
        }
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), t]), device);
    let hidden = model.decode(ids, None, None, false).0;
    let e = hidden.dims()[2];
    let hidden = hidden.reshape([rows.len() * t, e]);
    score_positions(model, hidden, at, &targets, &lens, device)
}

/// The LM head and log-softmax only at the rows `at` of `hidden` [rows, e], which predict
/// `targets`; consecutive runs of `lens` targets make one request's score each. The logits exist
/// for `lm_head_chunk(vocab)` rows at a time, like the chunked losses'.
fn score_positions<B: Backend>(
    model: &Opt<B>,
    hidden: Tensor<B, 2>,
    at: Vec<i64>,
    targets: &[u32],
    lens: &[usize],
    device: &B::Device,
) -> Vec<Score> {
    let n = at.len();
    let at = Tensor::<B, 1, Int>::from_data(TensorData::new(at, [n]), device);
    let picked = hidden.select(0, at);
    let (mut logprobs, mut greedy) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let chunk = loss::lm_head_chunk(model.config.vocab_size);
    for start in (0..n).step_by(chunk) {
        let rows = start..(start + chunk).min(n);
        let (lp, g) = pick_log_probs(model, picked.clone().slice(rows.clone()), &targets[rows]);
        logprobs.extend(lp);
        greedy.extend(g);
    }
    let mut offset = 0;
    lens.iter()
        .map(|&len| {
            let span = offset..offset + len;
            offset = span.end;
            Score {
                // Summed in float32, as torch sums lm-eval's float32 log-probs.
                loglikelihood: logprobs[span.clone()].iter().sum::<f32>() as f64,
                is_greedy: span.clone().all(|k| greedy[k] == targets[k] as i64),
            }
        })
        .collect()
}

/// log p(target) of each row of `hidden` [rows, e] and the argmax token of its logits.
fn pick_log_probs<B: Backend>(
    model: &Opt<B>,
    hidden: Tensor<B, 2>,
    targets: &[u32],
) -> (Vec<f32>, Vec<i64>) {
    let logits = model
        .lm_head(hidden.unsqueeze_dim::<3>(0))
        .squeeze_dim::<2>(0);
    let greedy = logits.clone().argmax(1);
    let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let ids =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [targets.len(), 1]), &logits.device());
    let logprobs = log_softmax(logits, 1).gather(1, ids);
    let logprobs = logprobs
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 data");
    let greedy = greedy
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("i64 data");
    (logprobs, greedy)
}
