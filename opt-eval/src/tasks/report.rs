//! A document's metrics from its requests' scores (`acc`, `acc_norm`) and a task's aggregate with
//! lm-eval's standard errors.

use opt_data::tasks::{Metrics, PlannedItem};
use serde::Serialize;

use super::score::Score;

/// A document's result (one line of `--log-samples`).
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub doc_id: usize,
    pub fewshot: Vec<usize>,
    pub gold: usize,
    pub requests: Vec<RequestResult>,
    pub pred: usize,
    pub acc: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pred_norm: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
}

/// A request and its score, as lm-eval logs them.
#[derive(Debug, Clone, Serialize)]
pub struct RequestResult {
    pub context: String,
    pub continuation: String,
    pub truncated_tokens: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub cut_continuation_tokens: usize,
    pub loglikelihood: f64,
    pub is_greedy: bool,
}

/// A task's aggregate result.
#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub task: String,
    pub shots: usize,
    pub items: usize,
    pub requests: usize,
    pub truncated_requests: usize,
    /// Requests whose continuation alone exceeded the context (lm-eval refuses them; only their
    /// last `max_position_embeddings` tokens were scored).
    pub cut_continuations: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm_stderr: Option<f64>,
    /// The macro F1 of the predictions (CB; lm-eval's `cb_multi_fi`); lm-eval's stderr of it is
    /// a random bootstrap, so none is reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f1: Option<f64>,
    pub seconds: f64,
    pub items_per_second: f64,
}

/// Each document's metrics from its requests' scores.
pub fn item_results(
    planned: &[PlannedItem],
    scores: &[Vec<Score>],
    acc_norm: bool,
) -> Vec<ItemResult> {
    planned
        .iter()
        .zip(scores)
        .map(|(p, s)| item_result(p, s, acc_norm))
        .collect()
}

fn item_result(planned: &PlannedItem, scores: &[Score], acc_norm: bool) -> ItemResult {
    let item = &planned.item;
    let ll: Vec<f64> = scores.iter().map(|s| s.loglikelihood).collect();
    let pred = first_argmax(&ll);
    let pred_norm = acc_norm.then(|| {
        let normed: Vec<f64> = ll
            .iter()
            .zip(&item.choices)
            .map(|(l, c)| l / c.chars().count() as f64)
            .collect();
        first_argmax(&normed)
    });
    let requests = planned
        .requests
        .iter()
        .zip(&planned.inputs)
        .zip(scores)
        .map(|((r, input), s)| RequestResult {
            context: r.context.clone(),
            continuation: r.continuation.clone(),
            truncated_tokens: input.truncated,
            cut_continuation_tokens: input.cut_continuation,
            loglikelihood: s.loglikelihood,
            is_greedy: s.is_greedy,
        })
        .collect();
    let hit = |p: usize| if p == item.gold { 1.0 } else { 0.0 };
    ItemResult {
        doc_id: item.doc_id,
        fewshot: planned.fewshot.clone(),
        gold: item.gold,
        requests,
        pred,
        acc: hit(pred),
        pred_norm,
        acc_norm: pred_norm.map(hit),
    }
}

/// numpy's argmax: the first index of the largest value.
pub fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Means and lm-eval's standard errors (sample standard deviation / sqrt(n)), and the macro F1
/// when `metrics` asks for it.
pub fn aggregate(
    task: &str,
    shots: usize,
    results: &[ItemResult],
    seconds: f64,
    metrics: Metrics,
) -> TaskReport {
    let acc: Vec<f64> = results.iter().map(|r| r.acc).collect();
    let norm: Option<Vec<f64>> = results.iter().map(|r| r.acc_norm).collect();
    let norm = norm.filter(|v| !v.is_empty());
    let requests = results.iter().map(|r| r.requests.len()).sum();
    let truncated = results
        .iter()
        .flat_map(|r| &r.requests)
        .filter(|r| r.truncated_tokens > 0)
        .count();
    let cut = results
        .iter()
        .flat_map(|r| &r.requests)
        .filter(|r| r.cut_continuation_tokens > 0)
        .count();
    TaskReport {
        task: task.into(),
        shots,
        items: results.len(),
        requests,
        truncated_requests: truncated,
        cut_continuations: cut,
        acc: mean(&acc),
        acc_stderr: mean_stderr(&acc),
        acc_norm: norm.as_deref().map(mean),
        acc_norm_stderr: norm.as_deref().map(mean_stderr),
        f1: metrics.f1.then(|| macro_f1(results)),
        seconds,
        items_per_second: results.len() as f64 / seconds.max(1e-9),
    }
}

/// The mean over classes (choice indices 0..the most choices of any item) of the one-vs-rest F1
/// of the predictions, as sklearn's `f1_score` per class: 2·TP / (2·TP + FP + FN), and 0 for a
/// class with no true and no predicted item.
pub fn macro_f1(results: &[ItemResult]) -> f64 {
    let classes = results.iter().map(|r| r.requests.len()).max().unwrap_or(0);
    let f1 = |c: usize| {
        let count = |f: &dyn Fn(&ItemResult) -> bool| results.iter().filter(|r| f(r)).count();
        let tp = count(&|r| r.pred == c && r.gold == c);
        let fp = count(&|r| r.pred == c && r.gold != c);
        let fn_ = count(&|r| r.pred != c && r.gold == c);
        let denominator = 2 * tp + fp + fn_;
        if denominator == 0 {
            0.0
        } else {
            (2 * tp) as f64 / denominator as f64
        }
    };
    mean(&(0..classes).map(f1).collect::<Vec<_>>())
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The arithmetic mean.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// lm-eval's `mean_stderr`: sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n).
pub fn mean_stderr(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mu = mean(values);
    let var = values.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_and_argmax_like_lm_eval() {
        // Hand-derived: [1, 0, 0, 1]: mean 0.5, sample variance 1/3, stderr sqrt(1/12).
        let v = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(mean(&v), 0.5);
        assert!((mean_stderr(&v) - (1.0f64 / 12.0).sqrt()).abs() < 1e-15);
        assert_eq!(first_argmax(&[-3.0, -1.0, -1.0]), 1);
    }

    fn result(gold: usize, pred: usize) -> ItemResult {
        let request = RequestResult {
            context: String::new(),
            continuation: String::new(),
            truncated_tokens: 0,
            cut_continuation_tokens: 0,
            loglikelihood: 0.0,
            is_greedy: false,
        };
        ItemResult {
            doc_id: 0,
            fewshot: vec![],
            gold,
            requests: vec![request; 3],
            pred,
            acc: (gold == pred) as u8 as f64,
            pred_norm: None,
            acc_norm: None,
        }
    }

    #[test]
    fn macro_f1_like_sklearn() {
        // (gold, pred): class 0: TP 1, FP 1, FN 2 -> 2/5; class 1: TP 1, FP 1, FN 1 -> 2/4;
        // class 2: TP 0, FP 1, FN 0 -> 0. Mean (2/5 + 1/2 + 0) / 3 = 3/10.
        let r = [(0, 0), (0, 1), (1, 1), (1, 0), (0, 2)].map(|(g, p)| result(g, p));
        assert!((macro_f1(&r) - 0.3).abs() < 1e-15);
        // A class with no true and no predicted item scores 0 (sklearn's zero_division), so all
        // right on two of three classes gives 2/3, not 1.
        let r = [(0, 0), (1, 1)].map(|(g, p)| result(g, p));
        assert!((macro_f1(&r) - 2.0 / 3.0).abs() < 1e-15);
    }
}
