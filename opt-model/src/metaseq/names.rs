//! metaseq's parameter names: what each is in HF's naming and how it merges over model-parallel
//! parts.

/// How one metaseq parameter maps to HF and merges over model-parallel parts (metaseq
/// `scripts/reshard_mp.py` l.43-83, `modules/megatron/mpu/layers.py`; README of the fixtures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mapping {
    /// Not a parameter (`decoder.version`): dropped.
    Skip,
    /// Concatenated over parts along `dim`: 0 for vocabulary- and column-parallel tensors
    /// (`embed_tokens`, `fc1`, unfused `k/v/q_proj`), 1 for row-parallel weights (`fc2`, `out_proj`).
    Cat { dim: usize, hf: String },
    /// Identical in every part (LayerNorms, positions, projections, row-parallel biases).
    Replicated { hf: String },
    /// Fused `qkv_proj` of `layer`; `param` is `weight` or `bias`.
    Kvq { layer: usize, param: &'static str },
    /// `output_projection.weight`: the tied LM head, checked against `embed_tokens`.
    OutputProjection,
}

/// The mapping of a metaseq parameter name, `None` for names OPT does not have.
pub(super) fn classify(name: &str) -> Option<Mapping> {
    let rest = name.strip_prefix("decoder.")?;
    let same = |hf: &str| Some(Mapping::Replicated { hf: hf.into() });
    match rest {
        "version" => return Some(Mapping::Skip),
        "embed_tokens.weight" => {
            return Some(Mapping::Cat {
                dim: 0,
                hf: rest.into(),
            })
        }
        "output_projection.weight" => return Some(Mapping::OutputProjection),
        "embed_positions.weight" => return same(rest),
        // Only when word_embed_proj_dim != hidden_size (350m); plain, replicated Linears.
        "project_in_dim.weight" => return same("project_in.weight"),
        "project_out_dim.weight" => return same("project_out.weight"),
        // metaseq's final `layer_norm` exists only for pre-LN models; HF calls it final_layer_norm.
        "layer_norm.weight" => return same("final_layer_norm.weight"),
        "layer_norm.bias" => return same("final_layer_norm.bias"),
        _ => {}
    }
    let (layer, param) = rest.strip_prefix("layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    classify_layer(layer, param)
}

/// The mapping of `decoder.layers.<layer>.<param>`.
fn classify_layer(layer: usize, param: &str) -> Option<Mapping> {
    let hf = format!("layers.{layer}.{param}");
    Some(match param {
        "self_attn.qkv_proj.weight" => Mapping::Kvq {
            layer,
            param: "weight",
        },
        "self_attn.qkv_proj.bias" => Mapping::Kvq {
            layer,
            param: "bias",
        },
        "self_attn.k_proj.weight"
        | "self_attn.k_proj.bias"
        | "self_attn.v_proj.weight"
        | "self_attn.v_proj.bias"
        | "self_attn.q_proj.weight"
        | "self_attn.q_proj.bias"
        | "fc1.weight"
        | "fc1.bias" => Mapping::Cat { dim: 0, hf },
        "self_attn.out_proj.weight" | "fc2.weight" => Mapping::Cat { dim: 1, hf },
        // Row-parallel biases are added once after the all-reduce: full in every part.
        "self_attn.out_proj.bias"
        | "fc2.bias"
        | "self_attn_layer_norm.weight"
        | "self_attn_layer_norm.bias"
        | "final_layer_norm.weight"
        | "final_layer_norm.bias" => Mapping::Replicated { hf },
        _ => return None,
    })
}

/// Why an unknown name is unknown, when we can tell.
pub(super) fn unknown_hint(name: &str) -> String {
    if name.contains("flat_param") {
        " — a raw FSDP shard: unflatten it first with metaseq's `reshard_fsdp.py --unflatten-weights`".into()
    } else if !name.starts_with("decoder.") {
        " — metaseq parameters all start with `decoder.`".into()
    } else {
        String::new()
    }
}

/// metaseq's name for an HF name without prefix (for messages).
pub(super) fn metaseq_name(hf: &str) -> String {
    format!("decoder.{hf}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn megatron_split_rules() {
        let cat = |dim, hf: &str| Some(Mapping::Cat { dim, hf: hf.into() });
        let same = |hf: &str| Some(Mapping::Replicated { hf: hf.into() });
        // Column-parallel (output rows split) and vocabulary-parallel: dim 0.
        assert_eq!(
            classify("decoder.layers.3.fc1.weight"),
            cat(0, "layers.3.fc1.weight")
        );
        assert_eq!(
            classify("decoder.embed_tokens.weight"),
            cat(0, "embed_tokens.weight")
        );
        // Row-parallel weights (input columns split): dim 1; their biases are whole in every part.
        assert_eq!(
            classify("decoder.layers.0.fc2.weight"),
            cat(1, "layers.0.fc2.weight")
        );
        assert_eq!(
            classify("decoder.layers.0.self_attn.out_proj.bias"),
            same("layers.0.self_attn.out_proj.bias")
        );
        assert_eq!(
            classify("decoder.layers.7.self_attn.qkv_proj.bias"),
            Some(Mapping::Kvq {
                layer: 7,
                param: "bias"
            })
        );
        assert_eq!(
            classify("decoder.layer_norm.weight"),
            same("final_layer_norm.weight")
        );
        assert_eq!(
            classify("decoder.project_in_dim.weight"),
            same("project_in.weight")
        );
        assert_eq!(
            classify("decoder.output_projection.weight"),
            Some(Mapping::OutputProjection)
        );
        assert_eq!(classify("decoder.version"), Some(Mapping::Skip));
        for unknown in [
            "decoder.layers.0.adapter.weight",
            "decoder.layers.x.fc1.weight",
            "encoder.layers.0.fc1.weight",
        ] {
            assert_eq!(classify(unknown), None, "{unknown}");
        }
        assert!(unknown_hint("decoder.layers.0.flat_param_0").contains("reshard_fsdp.py"));
        assert!(unknown_hint("model.fc1.weight").contains("start with `decoder.`"));
    }
}
