//! `opt data prepare`'s library: split, packing, mixing, manifest, compressed inputs, bad input.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use opt_data::shard::read_shard;
use opt_data::tokenizer::special;
use opt_data::{
    encode_documents, load_prepared, prepare_dataset, read_corpus, CorpusError, CorpusOptions,
    OptTokenizer, PrepareError, PrepareOptions, Prepared, Source, Split, TextSplit,
    TokenizerChoice,
};

fn small_tokenizer() -> OptTokenizer {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tokenizer/bpe-small");
    let dir = std::env::var_os("OPT_TOKENIZER_FIXTURES")
        .map(|r| PathBuf::from(r).join("bpe-small"))
        .filter(|d| d.is_dir())
        .unwrap_or(dir);
    OptTokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"))
}

/// Documents with varied words, so that BPE pieces differ between them.
fn documents(n: usize, salt: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Document {i} of {salt}: the {} fox jumps over {} lazy dogs, {} times.",
                ["quick", "slow", "red", "brown"][i % 4],
                i * 7 % 13,
                i * i
            )
        })
        .collect()
}

fn write_docs(dir: &Path, docs: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    for (i, d) in docs.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:04}.txt")), d).unwrap();
    }
}

fn options(valid_fraction: f64) -> PrepareOptions {
    PrepareOptions {
        valid_fraction,
        seed: 7,
        ..Default::default()
    }
}

fn prepare(sources: &[Source], out: &Path, valid_fraction: f64) -> Prepared {
    prepare_dataset(
        sources,
        TokenizerChoice::Given(Box::new(small_tokenizer())),
        out,
        &options(valid_fraction),
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Split a stream into documents at `</s>`.
fn split_docs(stream: &[u32]) -> Vec<Vec<u32>> {
    let mut docs: Vec<Vec<u32>> = stream
        .split(|&t| t == special::EOS)
        .map(<[u32]>::to_vec)
        .collect();
    assert_eq!(docs.pop(), Some(vec![]), "the stream ends with </s>");
    docs
}

#[test]
fn every_document_lands_once_in_train_or_valid_and_reruns_are_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = documents(300, "corpus");
    write_docs(&tmp.path().join("in"), &docs);
    let out = tmp.path().join("out");
    let p = prepare(&[Source::new(tmp.path().join("in"))], &out, 0.2);

    // Each document's tokens appear exactly once, whole, in exactly one split.
    let tok = small_tokenizer();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let mut want: HashMap<Vec<u32>, usize> = HashMap::new();
    for ids in encode_documents(&tok, &refs).unwrap() {
        assert!(!ids.contains(&special::EOS));
        *want.entry(ids).or_default() += 1;
    }
    let (train, valid) = (split_docs(&p.train.to_vec()), split_docs(&p.valid.to_vec()));
    let mut got: HashMap<Vec<u32>, usize> = HashMap::new();
    for d in train.iter().chain(&valid) {
        *got.entry(d.clone()).or_default() += 1;
    }
    assert_eq!(got, want);
    assert!(
        !valid.is_empty() && valid.len() < 120,
        "about 20% held out: {}",
        valid.len()
    );
    let m = &p.manifest;
    assert_eq!(
        (m.sources[0].train_documents, m.sources[0].valid_documents),
        (train.len(), valid.len())
    );
    assert_eq!(m.train_tokens as usize, p.train.len());
    assert_eq!(m.tokenizer.fingerprint, tok.fingerprint());

    // On disk: shards, manifest and tokenizer load back and agree.
    let loaded = load_prepared(&out).unwrap();
    assert_eq!(
        (loaded.train, loaded.valid),
        (p.train.clone(), p.valid.clone())
    );
    assert_eq!(loaded.manifest, p.manifest);

    // A re-run (another folder) decides every document the same way: identical shards.
    let again = prepare(
        &[Source::new(tmp.path().join("in"))],
        &tmp.path().join("again"),
        0.2,
    );
    assert_eq!((again.train, again.valid), (p.train, p.valid));
}

#[test]
fn sources_mix_by_weight_and_fixed_splits_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, v) = (documents(40, "a"), documents(40, "b"), documents(5, "v"));
    write_docs(&tmp.path().join("a"), &a);
    write_docs(&tmp.path().join("b"), &b);
    write_docs(&tmp.path().join("v"), &v);
    let src = |name: &str, weight, split| Source {
        paths: vec![tmp.path().join(name)],
        weight,
        split,
    };
    let p = prepare(
        &[
            src("a", 2.0, Split::Train),
            src("b", 0.5, Split::Train),
            src("v", 1.0, Split::Valid),
        ],
        &tmp.path().join("out"),
        0.0,
    );
    let tok = small_tokenizer();
    let count = |docs: &[String], stream: &[u32]| -> Vec<usize> {
        let split = split_docs(stream);
        docs.iter()
            .map(|d| {
                let ids = tok.encode_plain(d).unwrap();
                split.iter().filter(|s| **s == ids).count()
            })
            .collect()
    };
    assert!(
        count(&a, &p.train.to_vec()).iter().all(|&c| c == 2),
        "weight 2: every document twice"
    );
    let b_counts = count(&b, &p.train.to_vec());
    assert!(b_counts.iter().all(|&c| c <= 1));
    let kept = b_counts.iter().sum::<usize>();
    assert!(
        (10..=30).contains(&kept),
        "weight 0.5 keeps about half: {kept}"
    );
    assert!(count(&v, &p.train.to_vec()).iter().all(|&c| c == 0));
    assert!(
        count(&v, &p.valid.to_vec()).iter().all(|&c| c == 1),
        "fixed valid source"
    );
    assert_eq!(p.manifest.sources[0].train_tokens, {
        let n: usize = a
            .iter()
            .map(|d| tok.encode_plain(d).unwrap().len() + 1)
            .sum();
        2 * n as u64
    });
}

#[test]
fn compressed_and_jsonl_inputs_read_like_plain_text() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = documents(20, "jsonl");
    let jsonl: String = docs
        .iter()
        .map(|d| serde_json::json!({ "text": d, "meta": 1 }).to_string() + "\n")
        .collect();
    std::fs::write(tmp.path().join("plain.jsonl"), &jsonl).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(tmp.path().join("c.jsonl.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(jsonl.as_bytes()).unwrap();
    gz.finish().unwrap();
    std::fs::write(
        tmp.path().join("c.jsonl.zst"),
        zstd::encode_all(jsonl.as_bytes(), 3).unwrap(),
    )
    .unwrap();
    let opts = CorpusOptions::default();
    for name in ["plain.jsonl", "c.jsonl.gz", "c.jsonl.zst"] {
        let c = read_corpus(&[tmp.path().join(name)], &opts).unwrap();
        let texts: Vec<String> = c.documents.into_iter().map(|d| d.text).collect();
        assert_eq!(texts, docs, "{name}");
    }
    // A corrupt compressed file is an error naming it.
    std::fs::write(tmp.path().join("bad.txt.zst"), b"definitely not zstd").unwrap();
    let e = read_corpus(&[tmp.path().join("bad.txt.zst")], &opts).unwrap_err();
    assert!(
        matches!(e, CorpusError::Decompress { .. }) && e.to_string().contains("bad.txt.zst"),
        "{e}"
    );
}

#[test]
fn bad_input_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("mixed.jsonl");
    std::fs::write(
        &f,
        "{\"text\": \"good one\"}\n{\"text\": broken\n{\"body\": \"no text field\"}\n{\"text\": 5}\n{\"text\": \"good two\"}\n",
    )
    .unwrap();
    let lenient = CorpusOptions::default();
    let c = read_corpus(std::slice::from_ref(&f), &lenient).unwrap();
    assert_eq!(c.documents.len(), 2);
    assert_eq!(c.skipped_lines.len(), 3);
    let name = f.display().to_string();
    assert!(
        c.skipped_lines[0].starts_with(&format!("{name}:2: malformed JSON")),
        "{:?}",
        c.skipped_lines
    );
    assert!(c.skipped_lines[1].starts_with(&format!("{name}:3: no string field `text`")));
    assert!(c.skipped_lines[2].starts_with(&format!("{name}:4:")));
    // --strict: the first bad line is an error naming file and line.
    let strict = CorpusOptions {
        strict: true,
        ..Default::default()
    };
    let e = read_corpus(std::slice::from_ref(&f), &strict).unwrap_err();
    assert!(matches!(e, CorpusError::Json { line: 2, .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("{name}:2:")), "{e}");
    // Another text field name.
    let body = CorpusOptions {
        text_field: "body".into(),
        ..Default::default()
    };
    assert_eq!(
        read_corpus(std::slice::from_ref(&f), &body)
            .unwrap()
            .documents[0]
            .text,
        "no text field"
    );

    // Invalid UTF-8 is replaced and counted.
    let u = tmp.path().join("latin1.txt");
    std::fs::write(&u, b"caf\xe9 and na\xefve\n").unwrap();
    let c = read_corpus(std::slice::from_ref(&u), &lenient).unwrap();
    assert_eq!(c.replaced_invalid_utf8, 2);
    assert_eq!(c.documents[0].text, "caf\u{FFFD} and na\u{FFFD}ve");

    // Blank-line splitting and metaseq's rstrip.
    let t = tmp.path().join("blocks.txt");
    std::fs::write(&t, "first block  \nstill first\n\n\n\nsecond\t\n\n").unwrap();
    let blocks = CorpusOptions {
        split: TextSplit::BlankLine,
        ..Default::default()
    };
    let texts: Vec<String> = read_corpus(&[t], &blocks)
        .unwrap()
        .documents
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["first block  \nstill first", "second"]);
    // Windows line endings and whitespace-only separator lines split too.
    let crlf = tmp.path().join("crlf.txt");
    std::fs::write(&crlf, "one\r\nline two\r\n\r\n  \t\r\nthree\r\n").unwrap();
    let texts: Vec<String> = read_corpus(&[crlf], &blocks)
        .unwrap()
        .documents
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["one\r\nline two", "three"]);

    // An empty corpus (empty files, blank JSONL) is an error, not an empty dataset.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("a.txt"), "   \n\n").unwrap();
    std::fs::write(empty.join("b.jsonl"), "\n").unwrap();
    let e = read_corpus(std::slice::from_ref(&empty), &lenient).unwrap_err();
    assert!(
        matches!(e, CorpusError::Empty(_)) && e.to_string().contains("no documents"),
        "{e}"
    );
    let e = prepare_dataset(
        &[Source::new(&empty)],
        TokenizerChoice::Given(Box::new(small_tokenizer())),
        &tmp.path().join("out"),
        &options(0.1),
        |_| {},
    )
    .err()
    .unwrap();
    assert!(
        matches!(e, PrepareError::Corpus(CorpusError::Empty(_))),
        "{e}"
    );
    // A missing path names itself.
    let e = read_corpus(&[tmp.path().join("nope")], &lenient).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn damaged_prepared_folders_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_docs(&tmp.path().join("in"), &documents(50, "x"));
    let out = tmp.path().join("out");
    prepare(&[Source::new(tmp.path().join("in"))], &out, 0.1);
    // A shard whose size disagrees with its header.
    let train = out.join("train.tok");
    let bytes = std::fs::read(&train).unwrap();
    std::fs::write(&train, &bytes[..bytes.len() - 2]).unwrap();
    let e = load_prepared(&out).err().unwrap().to_string();
    assert!(e.contains("train.tok") && e.contains("header says"), "{e}");
    std::fs::write(&train, &bytes).unwrap();
    assert!(read_shard(&train).is_ok());
    // A tokenizer swapped after the shards were made.
    let tok_json = out.join("tokenizer/tokenizer.json");
    let original = std::fs::read_to_string(&tok_json).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
    v["model"]["merges"].as_array_mut().unwrap().pop();
    std::fs::write(&tok_json, v.to_string()).unwrap();
    let e = load_prepared(&out).err().unwrap().to_string();
    assert!(
        e.contains("manifest.json") && e.contains("fingerprint"),
        "{e}"
    );
    std::fs::write(&tok_json, original).unwrap();
    // No manifest: an interrupted prepare, never read as complete.
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    assert!(!opt_data::is_prepared(&out));
    let e = load_prepared(&out).err().unwrap().to_string();
    assert!(e.contains("manifest.json"), "{e}");
    // A negative weight is refused.
    let e = prepare_dataset(
        &[Source {
            weight: -1.0,
            ..Source::new(tmp.path().join("in"))
        }],
        TokenizerChoice::Given(Box::new(small_tokenizer())),
        &out,
        &options(0.1),
        |_| {},
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("weight -1"), "{e}");
}
