//! The OPT decoder with its tied LM head (HF `OPTForCausalLM`).

use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, Linear, LinearConfig};
use burn::prelude::*;

use crate::attention::build_attention_mask;
use crate::cache::KvCache;
use crate::config::OptConfig;
use crate::layer::{affine_layer_norm, layer_norm, OptDecoderLayer};
use crate::linear::linear;

/// HF's learned positions start at row 2 of `embed_positions` (a fairseq legacy: rows 0 and 1
/// were reserved for the padding index), so position p reads row p + 2 and pads read row 1.
pub const POSITION_OFFSET: i64 = 2;

/// OPT: `model.decoder.*` of an HF checkpoint, with the LM head tied to `embed_tokens`.
#[derive(Module, Debug)]
pub struct Opt<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub embed_positions: Embedding<B>,
    pub project_in: Option<Linear<B>>,
    pub project_out: Option<Linear<B>>,
    pub layers: Vec<OptDecoderLayer<B>>,
    pub final_layer_norm: Option<LayerNorm<B>>,
    #[module(skip)]
    pub config: OptConfig,
    /// The LM head's own copy of `embed_tokens` in a lighter format (`with_weight_dtype`), for
    /// inference; `None`: the head is `embed_tokens` itself.
    #[module(skip)]
    pub lm_head: Option<Tensor<B, 2>>,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct OptOutput<B: Backend> {
    /// [b, t, vocab].
    pub logits: Tensor<B, 3>,
    /// The input of the LM head: [b, t, word_embed_proj_dim].
    pub last_hidden_state: Tensor<B, 3>,
    /// When asked for: the input of layer 0, then the output of each layer.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

impl<B: Backend> Opt<B> {
    /// Build a model of `config`'s shape (Burn's default init; see `opt-train` for the paper's).
    pub fn new(config: &OptConfig, device: &B::Device) -> Self {
        let (d, e) = (config.hidden_size, config.embed_dim());
        let projection = |i, o| {
            config
                .has_projections()
                .then(|| LinearConfig::new(i, o).with_bias(false).init(device))
        };
        Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, e).init(device),
            embed_positions: EmbeddingConfig::new(
                config.max_position_embeddings + POSITION_OFFSET as usize,
                d,
            )
            .init(device),
            project_in: projection(e, d),
            project_out: projection(d, e),
            layers: (0..config.num_hidden_layers)
                .map(|_| OptDecoderLayer::new(config, device))
                .collect(),
            final_layer_norm: config
                .has_final_layer_norm()
                .then(|| affine_layer_norm(config, device))
                .flatten(),
            config: config.clone(),
            lm_head: None,
        }
    }

    /// Logits for `input_ids` [b, t]; `attention_mask` [b, past + t] (1 = real token) allows left padding.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.forward_full(input_ids, attention_mask, cache, false)
            .logits
    }

    /// Forward pass that can also return every intermediate hidden state.
    pub fn forward_full(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
        keep_hidden: bool,
    ) -> OptOutput<B> {
        let (h, hidden_states) = self.decode(input_ids, attention_mask, cache, keep_hidden);
        OptOutput {
            logits: self.lm_head(h.clone()),
            last_hidden_state: h,
            hidden_states,
        }
    }

    /// The decoder without the LM head: its input [b, t, word_embed_proj_dim], and when asked
    /// the input of layer 0 and the output of each layer.
    pub fn decode(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        mut cache: Option<&mut KvCache<B>>,
        keep_hidden: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let device = input_ids.device();
        let [b, t] = input_ids.dims();
        let past = cache.as_ref().map_or(0, |c| c.len());
        let mask = build_attention_mask::<B>(b, t, past, attention_mask.as_ref(), &device);
        let mut h = self.embed(input_ids, attention_mask.as_ref(), past);
        let mut hidden_states = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if keep_hidden {
                hidden_states.push(h.clone());
            }
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(h, &mask, layer_cache);
        }
        if keep_hidden {
            hidden_states.push(h.clone());
        }
        (self.finish(h), hidden_states)
    }

    /// The input of layer 0 [b, t, hidden_size] for `input_ids` [b, t] after `past` cached tokens.
    pub fn embed(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<&Tensor<B, 2, Int>>,
        past: usize,
    ) -> Tensor<B, 3> {
        let [b, t] = input_ids.dims();
        let positions = self.position_ids(b, t, past, attention_mask, &input_ids.device());
        let mut tokens = self.embed_tokens.forward(input_ids);
        if let Some(project_in) = &self.project_in {
            tokens = linear(project_in, tokens);
        }
        // No embedding scaling and no dropout on the embeddings (HF OPT).
        tokens + self.embed_positions.forward(positions)
    }

    /// The LM head's input [b, t, word_embed_proj_dim] from the last layer's output: the final
    /// layer norm (pre-LN models) and `project_out` (models whose embeddings are narrower).
    pub fn finish(&self, mut h: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.config.has_final_layer_norm() {
            h = layer_norm(&self.final_layer_norm, h);
        }
        if let Some(project_out) = &self.project_out {
            h = linear(project_out, h);
        }
        h
    }

    /// The LM head's weight [vocab, word_embed_proj_dim]: tied to the token embedding (or its
    /// copy in a lighter format, see `with_weight_dtype`).
    pub fn lm_head_weight(&self) -> Tensor<B, 2> {
        match &self.lm_head {
            Some(weight) => weight.clone(),
            None => self.embed_tokens.weight.val(),
        }
    }

    /// The LM head, tied to the token embedding: logits = h @ embed_tokens^T.
    pub fn lm_head(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = h.dims();
        let weight = self.lm_head_weight();
        let vocab = weight.dims()[0];
        // A 2-D matmul against the transposed view: reshaping the transposed [d, V] weight (as an
        // unsqueeze would) copies all of it on every call (154 MB per decoded token for 125m).
        h.reshape([b * t, d])
            .matmul(weight.transpose())
            .reshape([b, t, vocab])
    }

    /// Rows of `embed_positions` for the `t` new tokens after `past` cached ones.
    fn position_ids(
        &self,
        b: usize,
        t: usize,
        past: usize,
        attention_mask: Option<&Tensor<B, 2, Int>>,
        device: &B::Device,
    ) -> Tensor<B, 2, Int> {
        match attention_mask {
            // pos = cumsum(mask) * mask - 1: the first real token is 0, pads are -1 (row 1).
            Some(mask) => {
                let pos = mask.clone().cumsum(1) * mask.clone() - 1 + POSITION_OFFSET;
                pos.slice([0..b, past..past + t])
            }
            None => Tensor::<B, 1, Int>::arange(
                past as i64 + POSITION_OFFSET..(past + t) as i64 + POSITION_OFFSET,
                device,
            )
            .reshape([1, t])
            .expand([b, t]),
        }
    }
}
