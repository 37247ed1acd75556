//! Tokenizer parity with `transformers` for every case file under `$OPT_TOKENIZER_FIXTURES`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use opt::data::OptTokenizer;
use serde_json::Value;

fn fixture_dirs() -> Vec<PathBuf> {
    let root = std::env::var_os("OPT_TOKENIZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/tokenizer")
        });
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read {} (set OPT_TOKENIZER_FIXTURES): {e}",
                root.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("cases.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no tokenizer fixture folder under {}",
        root.display()
    );
    dirs
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn encodes_and_decodes_like_transformers() {
    let start = Instant::now();
    let mut total = 0;
    for dir in fixture_dirs() {
        let tokenizer = OptTokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap())
                .unwrap();
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["ids"]);
            let t0 = Instant::now();
            let got = tokenizer.encode(text).unwrap();
            assert_eq!(got, want, "{}: case {name}", dir.display());
            assert!(
                t0.elapsed().as_secs_f64() < 2.0,
                "{name}: encoding took {:?}",
                t0.elapsed()
            );
            if let Some(d) = case["decoded_skip_special"].as_str() {
                assert_eq!(
                    tokenizer.decode(&got, true).unwrap(),
                    d,
                    "{}: decode(skip special) {name}",
                    dir.display()
                );
            }
            if let Some(d) = case["decoded"].as_str() {
                assert_eq!(
                    tokenizer.decode(&got, false).unwrap(),
                    d,
                    "{}: decode {name}",
                    dir.display()
                );
            }
            total += 1;
        }
    }
    println!("{total} tokenizer cases matched in {:.2?}", start.elapsed());
}

/// The built-in GPT-2 BPE (`--tokenizer gpt2`) against plain GPT-2 for every `gpt2-ids.json`:
/// through the documented mapping (GPT-2 id g = our id - 4), the ids, and so the pieces, are
/// GPT-2's; decoding gives the text back.
#[test]
fn builtin_gpt2_matches_plain_gpt2() {
    let start = Instant::now();
    let tokenizer = OptTokenizer::load(Path::new("gpt2")).unwrap();
    println!("built the GPT-2 tokenizer in {:.2?}", start.elapsed());
    assert_eq!(tokenizer.padded_vocab_size() % 8, 0);
    let mut total = 0;
    for dir in fixture_dirs() {
        let Ok(text) = std::fs::read_to_string(dir.join("gpt2-ids.json")) else {
            continue;
        };
        let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["ids"]);
            let ours = tokenizer.encode_plain(text).unwrap();
            let got: Vec<u32> = ours
                .iter()
                .map(|&i| opt::data::gpt2::to_gpt2_id(i).expect("no OPT special id from text"))
                .collect();
            assert_eq!(got, want, "{}: gpt2 case {name}", dir.display());
            // A prompt gets OPT's `</s>` first, then the same pieces.
            assert_eq!(tokenizer.encode(text).unwrap()[1..], ours[..]);
            if let Some(d) = case["decoded"].as_str() {
                assert_eq!(tokenizer.decode(&ours, false).unwrap(), d, "decode {name}");
            }
            total += 1;
        }
    }
    assert!(total > 0, "no gpt2-ids.json under the tokenizer fixtures");
    println!("{total} GPT-2 cases matched in {:.2?}", start.elapsed());
}
