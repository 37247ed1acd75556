//! Perplexity evaluation the way published OPT numbers are computed.
//!
//! The GPTQ/OPT WikiText-2 protocol: the test documents are joined with "\n\n", tokenized once
//! (one `</s>` in front), and cut into non-overlapping windows of the model's context; each window
//! is scored on its own (its first token is never predicted) and the perplexity is
//! exp(total NLL / predicted tokens). The strided variant is HF's sliding window ("Perplexity of
//! fixed-length models"): windows of `seq_len` starting every `stride` tokens, scoring only the
//! tokens that the previous window did not.

use burn::prelude::*;
use opt_model::{loss, Opt};
use serde::Serialize;

/// Errors of an evaluation request.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("seq_len {seq_len} must be in 2..={max} (the model's max_position_embeddings)")]
    SeqLen { seq_len: usize, max: usize },
    #[error("stride {stride} must be in 1..={seq_len} (seq_len)")]
    Stride { stride: usize, seq_len: usize },
    #[error("{tokens} tokens are fewer than one window of {seq_len}; lower --seq-len")]
    TooShort { tokens: usize, seq_len: usize },
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// Tokens that were predicted and scored.
    pub tokens: u64,
    pub mean_loss: f64,
    pub perplexity: f64,
    pub windows: usize,
    /// Tail tokens that fit no whole non-overlapping window (the GPTQ protocol drops them).
    pub dropped_tokens: usize,
    pub seq_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stride: Option<usize>,
}

/// A window of the token stream: `tokens[start..end]`, scoring targets at positions >= `score_from`
/// (relative to `start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: usize,
    end: usize,
    score_from: usize,
}

/// Perplexity of `model` on `tokens`, `batch` windows per forward pass.
pub fn perplexity<B: Backend>(
    model: &Opt<B>,
    tokens: &[u32],
    seq_len: usize,
    stride: Option<usize>,
    batch: usize,
    device: &B::Device,
) -> Result<EvalReport, EvalError> {
    let max = model.config.max_position_embeddings;
    if seq_len < 2 || seq_len > max {
        return Err(EvalError::SeqLen { seq_len, max });
    }
    if tokens.len() < seq_len {
        return Err(EvalError::TooShort {
            tokens: tokens.len(),
            seq_len,
        });
    }
    let windows = match stride {
        None => non_overlapping(tokens.len(), seq_len),
        Some(stride) if stride == 0 || stride > seq_len => {
            return Err(EvalError::Stride { stride, seq_len })
        }
        Some(stride) => strided(tokens.len(), seq_len, stride),
    };
    let (mut sum, mut count) = (0.0, 0.0);
    // Windows of equal length and scoring go through the model together (with a stride, the
    // first window scores all its tokens and a short tail differs).
    for group in
        windows.chunk_by(|a, b| (a.end - a.start, a.score_from) == (b.end - b.start, b.score_from))
    {
        for chunk in group.chunks(batch.max(1)) {
            let rows: Vec<&[u32]> = chunk.iter().map(|w| &tokens[w.start..w.end]).collect();
            let (s, c) = score_rows(model, &rows, chunk[0].score_from, device);
            sum += s;
            count += c;
        }
    }
    let covered = windows.last().map_or(0, |w| w.end);
    let mean_loss = sum / count;
    Ok(EvalReport {
        tokens: count as u64,
        mean_loss,
        perplexity: mean_loss.exp(),
        windows: windows.len(),
        dropped_tokens: tokens.len() - covered,
        seq_len,
        stride,
    })
}

/// Sum and count of the NLL of rows of equal length `n`: position t predicts token t + 1, and only
/// targets at positions >= `score_from` (and >= 1) count. The last token is not fed (its logits
/// predict nothing), which changes no scored logit in a causal model.
pub fn score_rows<B: Backend>(
    model: &Opt<B>,
    rows: &[&[u32]],
    score_from: usize,
    device: &B::Device,
) -> (f64, f64) {
    let (b, m) = (rows.len(), rows[0].len() - 1);
    let inputs: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[..m].iter().map(|&t| t as i64))
        .collect();
    let targets: Vec<i64> = rows
        .iter()
        .flat_map(|r| {
            r[1..].iter().enumerate().map(move |(t, &id)| {
                if t + 1 >= score_from {
                    id as i64
                } else {
                    loss::IGNORE_INDEX
                }
            })
        })
        .collect();
    let [inputs, targets] = [inputs, targets]
        .map(|v| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [b, m]), device));
    let (hidden, _) = model.decode(inputs, None, None, false);
    // The logits are made one slice of tokens at a time.
    let weight = model.lm_head_weight();
    let chunk = loss::lm_head_chunk(weight.dims()[0]);
    let (s, c) = loss::chunked_nll_sum(weight, hidden, targets, chunk);
    (s.into_scalar().elem(), c.into_scalar().elem())
}

/// GPTQ's windows: `len / seq_len` disjoint windows, the tail dropped.
fn non_overlapping(len: usize, seq_len: usize) -> Vec<Window> {
    (0..len / seq_len)
        .map(|k| Window {
            start: k * seq_len,
            end: (k + 1) * seq_len,
            score_from: 0,
        })
        .collect()
}

/// HF's sliding windows: begin every `stride` tokens, score the `end - prev_end` last targets.
fn strided(len: usize, seq_len: usize, stride: usize) -> Vec<Window> {
    let mut windows = Vec::new();
    let mut prev_end = 0;
    let mut begin = 0;
    while begin < len {
        let end = (begin + seq_len).min(len);
        let trg_len = end - prev_end;
        // A one-token window predicts nothing (only possible when stride == seq_len).
        if end - begin >= 2 {
            windows.push(Window {
                start: begin,
                end,
                score_from: end - begin - trg_len,
            });
        }
        prev_end = end;
        if end == len {
            break;
        }
        begin += stride;
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target position 1..len is scored exactly once (hand-derived from HF's loop).
    fn scored_positions(windows: &[Window]) -> Vec<usize> {
        let mut out = Vec::new();
        for w in windows {
            for t in (w.start + w.score_from.max(1))..w.end {
                out.push(t);
            }
        }
        out
    }

    #[test]
    fn strided_windows_score_every_token_once() {
        for (len, seq, stride) in [(10, 4, 2), (100, 16, 5), (9, 9, 3), (33, 8, 1), (10, 4, 3)] {
            let w = strided(len, seq, stride);
            assert_eq!(
                scored_positions(&w),
                (1..len).collect::<Vec<_>>(),
                "{len} {seq} {stride}"
            );
            assert!(w.iter().all(|w| w.end - w.start <= seq));
        }
        // stride == seq_len: the non-overlapping windows, each window's first token unpredicted,
        // plus the short tail (a 1-token tail predicts nothing and is no window).
        let w = strided(17, 8, 8);
        assert_eq!(w.len(), 2);
        assert_eq!(
            scored_positions(&w),
            [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(scored_positions(&strided(19, 8, 8)).len(), 7 + 7 + 2);
        // HF's example by hand: len 10, seq 4, stride 2 -> [0,4) all, [2,6) last 2, [4,8), [6,10).
        let w = strided(10, 4, 2);
        assert_eq!(
            w.iter()
                .map(|w| (w.start, w.end, w.score_from))
                .collect::<Vec<_>>(),
            vec![(0, 4, 0), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
        );
    }

    #[test]
    fn non_overlapping_windows_drop_the_tail() {
        let w = non_overlapping(10, 4);
        assert_eq!(w.len(), 2);
        assert_eq!((w[1].start, w[1].end), (4, 8));
        // Within each window, the first token is not predicted: 2 * 3 targets.
        assert_eq!(scored_positions(&w), vec![1, 2, 3, 5, 6, 7]);
    }
}
