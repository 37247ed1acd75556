//! A saved tokenizer read by the `tokenizers` crate alone (as HF's `AutoTokenizer` reads
//! `tokenizer.json`), encoding with special tokens, gives exactly `OptTokenizer`'s ids (`</s>`
//! first); loading it back gives the same tokenizer (ids and fingerprint).

use std::path::{Path, PathBuf};

use opt_data::OptTokenizer;

/// Every tokenizer folder under `$OPT_TOKENIZER_FIXTURES` (one `OptTokenizer::from_dir` loads).
fn fixture_tokenizers() -> Vec<(String, OptTokenizer)> {
    let root = std::env::var_os("OPT_TOKENIZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tokenizer")
        });
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e} (set OPT_TOKENIZER_FIXTURES)", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let loaded: Vec<_> = dirs
        .iter()
        .filter_map(|d| {
            let name = d.file_name()?.to_string_lossy().into_owned();
            Some((name, OptTokenizer::from_dir(d).ok()?))
        })
        .collect();
    assert!(
        !loaded.is_empty(),
        "no tokenizer folder under {}",
        root.display()
    );
    loaded
}

const TEXTS: [&str; 4] = [
    "ROMEO:",
    "Hello world, how are you?",
    " leading space\nand lines",
    "</s> inside",
];

#[test]
fn exported_tokenizer_json_adds_bos_like_opt() {
    // Each fixture tokenizer as its folder says (BOS or not, from tokenizer_config.json) and with
    // the other BOS setting, as `opt tokenizer train` may write it; and the built-in GPT-2 BPE.
    let mut cases = vec![("gpt2".to_string(), OptTokenizer::gpt2().unwrap())];
    for (name, tok) in fixture_tokenizers() {
        let flipped = OptTokenizer::from_inner(tok.inner().clone(), !tok.adds_bos());
        cases.push((format!("{name}, BOS {}", !tok.adds_bos()), flipped));
        cases.push((format!("{name}, BOS {}", tok.adds_bos()), tok));
    }
    for (name, tok) in cases {
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let hf = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let back = OptTokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(
            tok.encode("ROMEO:").unwrap()[0] == 2,
            tok.adds_bos(),
            "{name}"
        );
        for text in TEXTS {
            let ours = tok.encode(text).unwrap();
            let theirs = hf.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(theirs, ours, "{name}: {text:?} through tokenizer.json");
            assert_eq!(
                back.encode(text).unwrap(),
                ours,
                "{name}: {text:?} reloaded"
            );
        }
        assert_eq!(
            back.fingerprint(),
            tok.fingerprint(),
            "{name}: reloaded fingerprint"
        );
        // Saving what was loaded writes the same file again.
        let again = tempfile::tempdir().unwrap();
        back.save(again.path()).unwrap();
        let read = |d: &Path| std::fs::read_to_string(d.join("tokenizer.json")).unwrap();
        assert_eq!(read(again.path()), read(dir.path()), "{name}");
    }
}
