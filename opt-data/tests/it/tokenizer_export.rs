//! A saved tokenizer read by the `tokenizers` crate alone (as HF's `AutoTokenizer` reads
//! `tokenizer.json`), encoding with special tokens, gives exactly `OptTokenizer`'s ids (`</s>`
//! first); loading it back gives the same tokenizer (ids and fingerprint).

use std::path::{Path, PathBuf};

use opt_data::OptTokenizer;

fn fixture(name: &str) -> PathBuf {
    std::env::var_os("OPT_TOKENIZER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tokenizer")
        })
        .join(name)
}

const TEXTS: [&str; 4] = [
    "ROMEO:",
    "Hello world, how are you?",
    " leading space\nand lines",
    "</s> inside",
];

#[test]
fn exported_tokenizer_json_adds_bos_like_opt() {
    // bpe-small's folder has no tokenizer_config.json (so no BOS); as `opt tokenizer train`
    // writes it, the same BPE prepends `</s>`.
    let plain = OptTokenizer::from_dir(fixture("bpe-small")).unwrap();
    let trained = OptTokenizer::from_inner(plain.inner().clone(), true);
    let gpt2 = OptTokenizer::gpt2().unwrap();
    for (name, tok) in [
        ("bpe-small", trained),
        ("gpt2", gpt2),
        ("bpe-small, no BOS", plain),
    ] {
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
