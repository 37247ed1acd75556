//! Validation loss during training: the mean next-token loss over the first whole blocks of the
//! validation stream, cut the way the training stream is (`BlockLoader` blocks of `seq_len + 1`).

use burn::prelude::*;
use opt_data::{BlockLoader, Tokens};
use opt_model::Opt;

use crate::perplexity::score_rows;

/// Mean loss over up to `max_batches` consecutive validation blocks (None if there is no whole block).
pub fn validation_loss<B: Backend>(
    model: &Opt<B>,
    tokens: &Tokens,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
    device: &B::Device,
) -> Option<f64> {
    let (sum, count) =
        validation_loss_part(model, tokens, seq_len, batch, max_batches, (0, 1), device);
    (count > 0.0).then(|| sum / count)
}

/// (loss sum, token count) of the batches of [`validation_loss`] whose index is `part.0` modulo
/// `part.1`: one data-parallel worker's share, summed over the workers by the caller.
pub fn validation_loss_part<B: Backend>(
    model: &Opt<B>,
    tokens: &Tokens,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
    (part, parts): (usize, usize),
    device: &B::Device,
) -> (f64, f64) {
    let loader = BlockLoader::new(tokens.clone(), seq_len, 0);
    let blocks = loader.num_blocks().min(batch * max_batches.max(1));
    let (mut sum, mut count) = (0.0, 0.0);
    for start in (0..blocks).step_by(batch).skip(part).step_by(parts) {
        let blocks: Vec<_> = (start..(start + batch).min(blocks))
            .map(|i| loader.block(i))
            .collect();
        let rows: Vec<&[u32]> = blocks.iter().map(|b| b.as_ref()).collect();
        let (s, c) = score_rows(model, &rows, 0, device);
        sum += s;
        count += c;
    }
    (sum, count)
}
