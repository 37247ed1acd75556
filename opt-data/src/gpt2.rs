//! The built-in GPT-2 byte-level BPE (`--tokenizer gpt2`): GPT-2's 50,257 tokens from the ranks
//! that the `tiktoken-rs` crate compiles in (`r50k_base`), so nothing is read at run time, laid out
//! with OPT's special ids first.
//!
//! Id mapping (documented, stable): `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, then GPT-2 id g -> g + 4
//! (so `<|endoftext|>` 50256 -> 50260); 50,261 ids, padded to 50,264 (a multiple of 8) for the
//! model. This is not the id order of Meta's OPT checkpoints (their `vocab.json` follows fairseq's
//! frequency-sorted `dict.txt`): use the checkpoint's own `vocab.json` + `merges.txt` for those.
//!
//! Like GPT-2, only `<|endoftext|>` is matched in raw text; a literal `</s>` or `<pad>` in a
//! document stays text (OPT's own tokenizer would turn it into a separator), so the pieces equal
//! plain GPT-2's for every text. The merges are recovered from the ranks the way transformers
//! converts a tiktoken encoding: each token splits into the two parts that byte-pair merging with
//! lower ranks leaves.

use std::collections::HashMap;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Offset of GPT-2's ids in the OPT layout (after `<s>`, `<pad>`, `</s>`, `<unk>`).
pub const ID_OFFSET: u32 = 4;
/// GPT-2's `<|endoftext|>` id.
pub const GPT2_ENDOFTEXT: u32 = 50256;

/// GPT-2 id -> built-in id.
pub fn from_gpt2_id(id: u32) -> u32 {
    id + ID_OFFSET
}

/// Built-in id -> GPT-2 id (None for OPT's four special ids).
pub fn to_gpt2_id(id: u32) -> Option<u32> {
    id.checked_sub(ID_OFFSET)
}

/// Build the built-in GPT-2 BPE in OPT's id layout (about 0.1 s); `OptTokenizer::gpt2` wraps it
/// with OPT's `</s>` prepended to prompts.
pub fn gpt2_bpe() -> Result<Tokenizer, String> {
    let bpe = tiktoken_rs::r50k_base().map_err(|e| e.to_string())?;
    let ranks: Vec<Vec<u8>> = bpe
        ._decode_native_and_split((0..GPT2_ENDOFTEXT).collect())
        .collect();
    let rank_of: HashMap<&[u8], u32> = ranks
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let chars = bytes_to_unicode();
    let piece = |bytes: &[u8]| -> String { bytes.iter().map(|&b| chars[b as usize]).collect() };
    let mut vocab: HashMap<String, u32> = ["<s>", "<pad>", "</s>", "<unk>"]
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), i as u32))
        .collect();
    let mut merges = Vec::new();
    for (r, token) in ranks.iter().enumerate() {
        vocab.insert(piece(token), from_gpt2_id(r as u32));
        if token.len() > 1 {
            let (a, b) = split_by_lower_ranks(token, r as u32, &rank_of)
                .ok_or_else(|| format!("rank {r} is not a merge of two lower ranks"))?;
            merges.push((piece(a), piece(b)));
        }
    }
    let model = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<ahash::AHashMap<_, _>>(), merges)
        .build()
        .map_err(|e| e.to_string())?;
    let mut inner = Tokenizer::new(model);
    inner.with_pre_tokenizer(Some(
        ByteLevel::default()
            .add_prefix_space(false)
            .trim_offsets(true),
    ));
    inner.with_decoder(Some(ByteLevel::default()));
    inner.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
    Ok(inner)
}

/// The two parts byte-pair merging leaves of `token` when only ranks below `rank` may merge.
fn split_by_lower_ranks<'a>(
    token: &'a [u8],
    rank: u32,
    rank_of: &HashMap<&[u8], u32>,
) -> Option<(&'a [u8], &'a [u8])> {
    // Part boundaries as byte offsets; start from single bytes.
    let mut bounds: Vec<usize> = (0..=token.len()).collect();
    loop {
        let best = (0..bounds.len() - 2)
            .filter_map(|i| {
                let r = *rank_of.get(&token[bounds[i]..bounds[i + 2]])?;
                (r < rank).then_some((r, i))
            })
            .min();
        match best {
            Some((_, i)) => {
                bounds.remove(i + 1);
            }
            None => break,
        }
    }
    (bounds.len() == 3).then(|| (&token[..bounds[1]], &token[bounds[1]..]))
}

/// GPT-2's byte -> printable character table (`encoder.py`'s `bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid char")
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        // Hand-checked against encoder.py: space -> 'Ġ' (U+0120), newline -> 'Ċ' (U+010A), 'a' -> 'a'.
        assert_eq!(
            (t[b' ' as usize], t[b'\n' as usize], t[b'a' as usize]),
            ('Ġ', 'Ċ', 'a')
        );
        assert_eq!(t[0], 'Ā');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }
}
