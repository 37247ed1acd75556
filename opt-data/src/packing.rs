//! Document packing and batching: documents joined with `</s>`, cut into blocks of `seq_len + 1`
//! tokens across document boundaries (metaseq's break mode "none"), visited in a seeded shuffled
//! order that a cursor can resume exactly.

use serde::{Deserialize, Serialize};

use std::borrow::Cow;

use crate::hash::{fnv1a64, splitmix64};
use crate::shard::Tokens;
use crate::tokenizer::{special, OptTokenizer, TokenizerError};

/// Tokenize documents in parallel and join them, each followed by `</s>`.
pub fn pack_documents(
    tokenizer: &OptTokenizer,
    documents: &[&str],
) -> Result<Vec<u32>, TokenizerError> {
    let mut tokens = Vec::new();
    for ids in encode_documents(tokenizer, documents)? {
        tokens.extend(ids);
        tokens.push(special::EOS);
    }
    Ok(tokens)
}

/// Tokenize documents (no BOS) on every core, in order.
pub fn encode_documents(
    tokenizer: &OptTokenizer,
    documents: &[&str],
) -> Result<Vec<Vec<u32>>, TokenizerError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(documents.len().max(1));
    let chunk = documents.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Vec<u32>>, TokenizerError>> = std::thread::scope(|s| {
        let handles: Vec<_> = documents
            .chunks(chunk)
            .map(|docs| s.spawn(move || docs.iter().map(|d| tokenizer.encode_plain(d)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("tokenizer thread"))
            .collect()
    });
    let mut out = Vec::with_capacity(documents.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}

/// Where a loader is in its stream of batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Index into this epoch's shuffled block order.
    pub position: u64,
}

/// Blocks of `seq_len + 1` tokens in a seeded order per epoch.
#[derive(Debug, Clone)]
pub struct BlockLoader {
    tokens: Tokens,
    seq_len: usize,
    seed: u64,
    order: Vec<u32>,
    order_epoch: Option<u64>,
}

/// A batch as flat row-major ids: inputs = `block[:-1]`, targets = `block[1:]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
}

impl BlockLoader {
    /// A loader over `tokens`; the last partial block is dropped.
    pub fn new(tokens: impl Into<Tokens>, seq_len: usize, seed: u64) -> Self {
        Self {
            tokens: tokens.into(),
            seq_len,
            seed,
            order: Vec::new(),
            order_epoch: None,
        }
    }

    /// Number of whole blocks.
    pub fn num_blocks(&self) -> usize {
        self.tokens.len() / (self.seq_len + 1)
    }

    /// Tokens of block `i`.
    pub fn block(&self, i: usize) -> Cow<'_, [u32]> {
        let n = self.seq_len + 1;
        self.tokens.range(i * n, (i + 1) * n)
    }

    /// The shuffled order of epoch `epoch` (a Fisher-Yates shuffle from splitmix64(seed, epoch)).
    pub fn order(&mut self, epoch: u64) -> &[u32] {
        if self.order_epoch != Some(epoch) {
            let mut order: Vec<u32> = (0..self.num_blocks() as u32).collect();
            let mut state = self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for i in (1..order.len()).rev() {
                let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            self.order = order;
            self.order_epoch = Some(epoch);
        }
        &self.order
    }

    /// The next `batch_size` blocks after `cursor`, advancing it (wrapping into the next epoch).
    pub fn next_batch(&mut self, cursor: &mut Cursor, batch_size: usize) -> Batch {
        assert!(
            self.num_blocks() > 0,
            "no whole block of {} tokens",
            self.seq_len + 1
        );
        let mut inputs = Vec::with_capacity(batch_size * self.seq_len);
        let mut targets = Vec::with_capacity(batch_size * self.seq_len);
        for _ in 0..batch_size {
            let index = self.next_index(cursor);
            let block = self.block(index);
            inputs.extend(block[..self.seq_len].iter().map(|&t| t as i64));
            targets.extend(block[1..].iter().map(|&t| t as i64));
        }
        Batch {
            batch_size,
            seq_len: self.seq_len,
            inputs,
            targets,
        }
    }

    /// Advance `cursor` past the next `blocks` blocks without reading them (another data-parallel
    /// worker's share of an update).
    pub fn skip(&mut self, cursor: &mut Cursor, blocks: usize) {
        for _ in 0..blocks {
            self.next_index(cursor);
        }
    }

    /// The block at `cursor`, advancing it (wrapping into the next epoch).
    fn next_index(&mut self, cursor: &mut Cursor) -> usize {
        if cursor.position as usize >= self.num_blocks() {
            *cursor = Cursor {
                epoch: cursor.epoch + 1,
                position: 0,
            };
        }
        let index = self.order(cursor.epoch)[cursor.position as usize] as usize;
        cursor.position += 1;
        index
    }
}

/// Stable per-document train/valid assignment: FNV-1a hash of the text, then a seeded fraction.
pub fn is_valid_document(text: &str, seed: u64, valid_fraction: f64) -> bool {
    let mut s = fnv1a64(text.bytes(), seed);
    (splitmix64(&mut s) as f64 / u64::MAX as f64) < valid_fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(n: u32) -> Vec<u32> {
        (0..n).map(|i| i % 97 + 4).collect()
    }

    #[test]
    fn blocks_cover_the_stream_in_order_and_each_epoch_is_a_permutation() {
        let tokens = stream(1000);
        let mut loader = BlockLoader::new(tokens.clone(), 15, 3);
        assert_eq!(loader.num_blocks(), 1000 / 16);
        // Blocks are seq_len + 1 consecutive tokens; in index order they rebuild the stream's prefix.
        let rebuilt: Vec<u32> = (0..loader.num_blocks())
            .flat_map(|i| loader.block(i).to_vec())
            .collect();
        assert_eq!(rebuilt, tokens[..rebuilt.len()]);
        for epoch in 0..3 {
            let mut order = loader.order(epoch).to_vec();
            order.sort_unstable();
            assert_eq!(
                order,
                (0..loader.num_blocks() as u32).collect::<Vec<_>>(),
                "epoch {epoch} visits every block once"
            );
        }
        assert_ne!(
            loader.order(0).to_vec(),
            loader.order(1).to_vec(),
            "epochs are reshuffled"
        );
        let mut again = BlockLoader::new(tokens, 15, 3);
        assert_eq!(
            loader.order(2).to_vec(),
            again.order(2).to_vec(),
            "same seed, same order"
        );
    }

    #[test]
    fn batches_shift_targets_and_a_cursor_resumes_the_same_sequence() {
        let mut a = BlockLoader::new(stream(2000), 31, 11);
        let mut cursor = Cursor::default();
        let batches: Vec<Batch> = (0..20).map(|_| a.next_batch(&mut cursor, 5)).collect();
        assert_eq!(cursor.epoch, 1, "62 blocks in 100 draws wraps into epoch 1");
        for b in &batches {
            assert_eq!(b.inputs.len(), 5 * 31);
            for r in 0..5 {
                assert_eq!(
                    b.inputs[r * 31 + 1..(r + 1) * 31],
                    b.targets[r * 31..(r + 1) * 31 - 1],
                    "targets are inputs shifted by one"
                );
            }
        }
        // Resume after 7 batches from a saved cursor with a fresh loader.
        let mut saved = Cursor::default();
        let mut probe = BlockLoader::new(stream(2000), 31, 11);
        for _ in 0..7 {
            probe.next_batch(&mut saved, 5);
        }
        let mut b = BlockLoader::new(stream(2000), 31, 11);
        for expected in &batches[7..] {
            assert_eq!(&b.next_batch(&mut saved, 5), expected);
        }
    }

    #[test]
    fn split_is_stable_and_partitions_documents() {
        let docs: Vec<String> = (0..2000).map(|i| format!("document number {i}")).collect();
        let valid: Vec<bool> = docs.iter().map(|d| is_valid_document(d, 5, 0.1)).collect();
        let again: Vec<bool> = docs.iter().map(|d| is_valid_document(d, 5, 0.1)).collect();
        assert_eq!(valid, again);
        let share = valid.iter().filter(|&&v| v).count() as f64 / docs.len() as f64;
        assert!((share - 0.1).abs() < 0.03, "valid share {share}");
    }
}
