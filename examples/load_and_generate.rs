//! Embed OPT in your own Burn app: load an HF-layout directory and continue a prompt greedily.
//!
//! `cargo run --example load_and_generate -- DIR "Hello"` (DIR needs config.json,
//! model.safetensors and tokenizer files, e.g. the `model/` folder `opt train` writes).

use burn::backend::Flex;
use opt::data::OptTokenizer;
use opt::model::generate::{generate, GenerateConfig};
use opt::model::load_pretrained;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: load_and_generate DIR PROMPT")?;
    let prompt = args.next().unwrap_or_else(|| "Hello".into());
    let device = Default::default();
    let model = load_pretrained::<Flex>(&dir, &device)?;
    let tokenizer = OptTokenizer::from_dir(&dir)?;
    let ids = tokenizer.encode(&prompt)?;
    let config = GenerateConfig {
        max_new_tokens: 30,
        ..Default::default()
    };
    let out = generate(&model, &[ids], &config, |_| {})?;
    println!("{prompt}{}", tokenizer.decode(&out.new_tokens[0], true)?);
    Ok(())
}
