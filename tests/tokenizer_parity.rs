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
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
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
