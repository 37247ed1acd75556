//! HF checkpoint I/O: exact round trip, half-precision and sharded files, name variants, and a
//! typed error for each kind of bad input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::{fixture_dirs, on_backend, read_tensors};
use burn::tensor::backend::AutodiffBackend;
use opt::model::checkpoint::{self, CheckpointError};
use opt::model::{ConfigError, OptConfig};
use opt::BackendTask;
use safetensors::{Dtype, View};

/// A raw tensor to write: dtype, shape, little-endian bytes.
#[derive(Clone)]
struct Raw(Dtype, Vec<usize>, Vec<u8>);

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.0
    }
    fn shape(&self) -> &[usize] {
        &self.1
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.2[..]).into()
    }
    fn data_len(&self) -> usize {
        self.2.len()
    }
}

fn read_raw(path: &Path) -> HashMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, Raw(v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write_raw(path: &Path, tensors: &HashMap<String, Raw>) {
    let data: Vec<(&str, &Raw)> = tensors.iter().map(|(n, r)| (n.as_str(), r)).collect();
    safetensors::serialize_to_file(data, None, path).unwrap();
}

/// A copy of a fixture checkpoint in a temp dir, with its tensors transformed by `edit`.
fn variant(
    src: &Path,
    edit: impl FnOnce(&mut HashMap<String, Raw>),
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = read_raw(&src.join("model.safetensors"));
    edit(&mut tensors);
    write_raw(&dir.join("model.safetensors"), &tensors);
    (tmp, dir)
}

fn a_fixture() -> PathBuf {
    fixture_dirs("forward").remove(0)
}

fn load_err<B: burn::prelude::Backend>(dir: &Path, device: &B::Device) -> CheckpointError {
    match checkpoint::load_pretrained::<B>(dir, device) {
        Ok(_) => panic!("{}: loading should fail", dir.display()),
        Err(e) => e,
    }
}

struct RoundTrip;
impl BackendTask for RoundTrip {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in fixture_dirs("forward") {
            let model = checkpoint::load_pretrained::<B>(&dir, &device).unwrap();
            let out = tempfile::tempdir().unwrap();
            checkpoint::save_pretrained(&model, out.path()).unwrap();
            // What we wrote equals the original file, tensor for tensor, bit for bit.
            let original = read_tensors(&dir.join("model.safetensors"));
            let written = read_tensors(&out.path().join("model.safetensors"));
            let mut names: Vec<_> = original.keys().collect();
            names.sort();
            let mut written_names: Vec<_> = written.keys().collect();
            written_names.sort();
            assert_eq!(names, written_names, "{}: key set", dir.display());
            for name in names {
                assert_eq!(original[name].shape, written[name].shape, "{name}");
                assert!(
                    original[name].values == written[name].values,
                    "{}: {name} not bit-identical",
                    dir.display()
                );
            }
            // transformers refuses files without format=pt.
            let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(
                meta.metadata()
                    .as_ref()
                    .and_then(|m| m.get("format"))
                    .map(String::as_str),
                Some("pt")
            );
            // And the config survives: reloading gives the same model config.
            let again = checkpoint::load_pretrained::<B>(out.path(), &device).unwrap();
            assert_eq!(again.config.to_json(), model.config.to_json());
            println!(
                "{}: round trip bit-identical ({} tensors)",
                dir.display(),
                original.len()
            );
        }
    }
}

#[test]
fn save_then_load_is_bit_identical() {
    on_backend(RoundTrip);
}

struct Variants;
impl BackendTask for Variants {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let src = a_fixture();
        let reference = read_tensors(&src.join("model.safetensors"));
        let saved = |model: &opt::model::Opt<B>| {
            let out = tempfile::tempdir().unwrap();
            checkpoint::save_pretrained(model, out.path()).unwrap();
            read_tensors(&out.path().join("model.safetensors"))
        };

        // `decoder.` prefix and an explicit tied lm_head.weight load the same tensors.
        let (_t, dir) = variant(&src, |t| {
            let renamed: HashMap<String, Raw> = t
                .drain()
                .map(|(n, r)| (n.trim_start_matches("model.").to_string(), r))
                .collect();
            let head = renamed["decoder.embed_tokens.weight"].clone();
            *t = renamed;
            t.insert("lm_head.weight".into(), head);
        });
        let got = saved(&checkpoint::load_pretrained::<B>(&dir, &device).unwrap());
        for (n, s) in &reference {
            assert!(got[n].values == s.values, "prefix variant: {n}");
        }

        // f16 and bf16 files are converted to f32 on load (values equal to the rounded inputs).
        for dtype in [Dtype::F16, Dtype::BF16] {
            let (_t, dir) = variant(&src, |t| {
                for r in t.values_mut() {
                    let f: Vec<f32> =
                        r.2.chunks_exact(4)
                            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                            .collect();
                    r.2 = f
                        .iter()
                        .flat_map(|&x| match dtype {
                            Dtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                            _ => half::bf16::from_f32(x).to_le_bytes(),
                        })
                        .collect();
                    r.0 = dtype;
                }
            });
            let got = saved(&checkpoint::load_pretrained::<B>(&dir, &device).unwrap());
            for (n, s) in &reference {
                for (a, e) in got[n].values.iter().zip(&s.values) {
                    let rounded = match dtype {
                        Dtype::F16 => half::f16::from_f32(*e as f32).to_f64(),
                        _ => half::bf16::from_f32(*e as f32).to_f64(),
                    };
                    assert_eq!(*a, rounded, "{dtype:?} {n}");
                }
            }
        }

        // Sharded: two files plus model.safetensors.index.json.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let all = read_raw(&src.join("model.safetensors"));
        let mut shards = [HashMap::new(), HashMap::new()];
        let mut weight_map = serde_json::Map::new();
        for (i, (n, r)) in all.into_iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
            weight_map.insert(n.clone(), file.into());
            shards[i % 2].insert(n, r);
        }
        for (i, shard) in shards.iter().enumerate() {
            write_raw(
                &dir.join(format!("model-0000{}-of-00002.safetensors", i + 1)),
                shard,
            );
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let got = saved(&checkpoint::load_pretrained::<B>(dir, &device).unwrap());
        for (n, s) in &reference {
            assert!(got[n].values == s.values, "sharded: {n}");
        }
    }
}

#[test]
fn loads_prefix_half_precision_and_sharded_variants() {
    on_backend(Variants);
}

struct BadInput;
impl BackendTask for BadInput {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let src = a_fixture();
        let fc1 = "model.decoder.layers.0.fc1.weight";

        let (_t, dir) = variant(&src, |t| {
            t.remove(fc1);
        });
        let e = load_err::<B>(&dir, &device);
        assert!(
            matches!(&e, CheckpointError::MissingTensor { name, .. } if name == fc1),
            "{e}"
        );
        assert!(
            e.to_string().contains(fc1) && e.to_string().contains("model.safetensors"),
            "{e}"
        );

        let (_t, dir) = variant(&src, |t| {
            let extra = t[fc1].clone();
            t.insert("model.decoder.layers.9.fc1.weight".into(), extra);
        });
        let e = load_err::<B>(&dir, &device);
        assert!(
            matches!(&e, CheckpointError::UnexpectedTensor { name, .. } if name == "model.decoder.layers.9.fc1.weight"),
            "{e}"
        );

        let (_t, dir) = variant(&src, |t| {
            let r = t.get_mut(fc1).unwrap();
            let [o, i] = [r.1[0], r.1[1]];
            r.1 = vec![o / 2, i];
            r.2.truncate(r.2.len() / 2);
        });
        let e = load_err::<B>(&dir, &device);
        match &e {
            CheckpointError::ShapeMismatch {
                name,
                found,
                expected,
                ..
            } => {
                assert_eq!(name, fc1);
                assert_eq!(found[0] * 2, expected[0]);
            }
            other => panic!("expected ShapeMismatch, got {other}"),
        }
        let msg = e.to_string();
        assert!(msg.contains(fc1) && msg.contains("config.json"), "{msg}");

        let (_t, dir) = variant(&src, |t| {
            t.get_mut(fc1).unwrap().0 = Dtype::I32;
        });
        assert!(matches!(
            load_err::<B>(&dir, &device),
            CheckpointError::Dtype { .. }
        ));

        // Truncated file, garbage file.
        let (_t, dir) = variant(&src, |_| {});
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
        let e = load_err::<B>(&dir, &device);
        assert!(
            matches!(e, CheckpointError::Corrupt { ref path, .. } if path == &weights),
            "{e}"
        );
        std::fs::write(
            &weights,
            b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file",
        )
        .unwrap();
        assert!(matches!(
            load_err::<B>(&dir, &device),
            CheckpointError::Corrupt { .. }
        ));

        // No weights at all.
        std::fs::remove_file(&weights).unwrap();
        assert!(matches!(
            load_err::<B>(&dir, &device),
            CheckpointError::NoWeights { .. }
        ));

        // An lm_head that is not the embedding.
        let (_t, dir) = variant(&src, |t| {
            let mut head = t["model.decoder.embed_tokens.weight"].clone();
            head.2[0] ^= 1;
            t.insert("lm_head.weight".into(), head);
        });
        assert!(matches!(
            load_err::<B>(&dir, &device),
            CheckpointError::UntiedHead { .. }
        ));

        // config.json that disagrees with itself.
        let (_t, dir) = variant(&src, |_| {});
        let config_path = dir.join("config.json");
        let base: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        let with = |key: &str, value: serde_json::Value| {
            let mut c = base.clone();
            c[key] = value;
            std::fs::write(&config_path, c.to_string()).unwrap();
            load_err::<B>(&dir, &device)
        };
        for (key, value, field) in [
            ("num_attention_heads", serde_json::json!(5), "hidden_size"),
            (
                "activation_function",
                serde_json::json!("gelu"),
                "activation_function",
            ),
            ("dropout", serde_json::json!(1.5), "dropout"),
            ("pad_token_id", serde_json::json!(100000), "pad_token_id"),
        ] {
            match with(key, value) {
                CheckpointError::Config(ConfigError::Invalid { field: f, path, .. }) => {
                    assert_eq!(f, field);
                    assert_eq!(path, config_path);
                }
                other => panic!("{key}: expected an invalid-config error, got {other}"),
            }
        }
        match with("hidden_size", serde_json::json!("sixty-four")) {
            CheckpointError::Config(ConfigError::Parse { field, .. }) => {
                assert_eq!(field, "hidden_size")
            }
            other => panic!("expected a parse error, got {other}"),
        }
    }
}

#[test]
fn bad_checkpoints_give_typed_errors() {
    on_backend(BadInput);
}

#[test]
fn config_defaults_and_unknown_fields() {
    // Missing fields take HF's defaults; unknown ones are kept and written back.
    let c = OptConfig::from_json(r#"{"hidden_size": 64, "num_attention_heads": 4, "ffn_dim": 256, "num_hidden_layers": 2, "some_future_field": [1, 2]}"#).unwrap();
    assert_eq!(c.vocab_size, 50272);
    assert_eq!(c.max_position_embeddings, 2048);
    assert!(c.do_layer_norm_before && c.enable_bias && c.layer_norm_elementwise_affine);
    assert_eq!((c.pad_token_id, c.bos_token_id, c.eos_token_id), (1, 2, 2));
    assert_eq!(c.embed_dim(), 64);
    let again = OptConfig::from_json(&c.to_json()).unwrap();
    assert_eq!(again.to_json(), c.to_json());
    assert_eq!(
        (again.hidden_size, again.vocab_size, again.embed_dim()),
        (64, 50272, 64)
    );
    let written: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(written["some_future_field"], serde_json::json!([1, 2]));
    assert_eq!(written["model_type"], "opt");
    assert_eq!(written["word_embed_proj_dim"], 64);
}

#[test]
fn presets_have_the_papers_sizes() {
    // Parameter counts from the config; opt-125m/350m/1.3b are published as 125M/331M/1.3B.
    let count = |name: &str| opt::model::preset(name).unwrap().config.num_params() as f64;
    assert!(
        (count("125m") / 1e6 - 125.2).abs() < 0.5,
        "125m: {}",
        count("125m")
    );
    assert!(
        (count("350m") / 1e6 - 331.2).abs() < 0.5,
        "350m: {}",
        count("350m")
    );
    assert!(
        (count("1.3b") / 1e9 - 1.316).abs() < 0.01,
        "1.3b: {}",
        count("1.3b")
    );
    assert!(
        (count("175b") / 1e9 - 175.0).abs() < 1.5,
        "175b: {}",
        count("175b")
    );
    let p350 = opt::model::preset("350m").unwrap();
    assert!(!p350.config.do_layer_norm_before && p350.config.embed_dim() == 512);
    for p in opt::model::presets() {
        p.config.validate().unwrap();
    }
}

#[test]
fn unavailable_backend_is_a_clear_error() {
    assert!(matches!(
        "metal".parse::<opt::BackendKind>(),
        Err(opt::BackendError::Unknown(_))
    ));
    #[cfg(not(feature = "cuda"))]
    {
        struct Nothing;
        impl BackendTask for Nothing {
            type Output = ();
            fn run<B: AutodiffBackend>(self, _: B::Device) {}
        }
        let e = opt::backend::run(opt::BackendKind::Cuda, Nothing).unwrap_err();
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
