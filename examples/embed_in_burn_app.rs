//! OPT inside your own Burn app: load a model folder, score a few sentences (their mean
//! next-token loss and perplexity, with the same code `opt eval` uses), then continue a prompt.
//!
//! `cargo run --release --example embed_in_burn_app -- DIR ["a prompt"]`, where DIR is an HF-layout
//! folder (`config.json`, `model.safetensors`, tokenizer files): the `model/` folder that
//! `opt train` writes (`runs/tiny/model` after the quickstart), `opt convert`'s output, or a
//! transformers `save_pretrained` of `facebook/opt-125m`.

use burn::backend::Flex;
use burn::prelude::Backend;
use opt::data::OptTokenizer;
use opt::eval::score_rows;
use opt::model::generate::{generate, GenerateConfig, Sampling};
use opt::model::{load_pretrained, Opt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: embed_in_burn_app DIR [PROMPT]")?;
    let prompt = args.next().unwrap_or_else(|| "To be, or not to be".into());
    let device = Default::default();
    let model: Opt<Flex> = load_pretrained(&dir, &device)?;
    let tokenizer = OptTokenizer::from_dir(&dir)?;

    for sentence in [
        "The king is dead; long live the king.",
        "king the; dead live long is the king.",
    ] {
        let (loss, tokens) = sentence_loss(&model, &tokenizer.encode(sentence)?, &device);
        println!(
            "{sentence:40} loss {loss:.3} over {tokens} tokens, perplexity {:.1}",
            loss.exp()
        );
    }

    let config = GenerateConfig {
        max_new_tokens: 30,
        // Greedy; a temperature, top-k or top-p (and a seed) sample instead.
        sampling: Sampling::default(),
        ..Default::default()
    };
    let out = generate(&model, &[tokenizer.encode(&prompt)?], &config, |_| {})?;
    println!("{prompt}{}", tokenizer.decode(&out.new_tokens[0], true)?);
    Ok(())
}

/// Mean next-token loss of `ids` (its first token, `</s>`, is context only) and how many tokens
/// that mean is over.
fn sentence_loss<B: Backend>(model: &Opt<B>, ids: &[u32], device: &B::Device) -> (f64, usize) {
    let (sum, count) = score_rows(model, &[ids], 0, device);
    (sum / count, count as usize)
}
