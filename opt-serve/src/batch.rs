//! The running batch: rows of different lengths right-aligned in one KV cache (left padding,
//! positions per row from the attention mask, as HF does), a row's prefill on its own, and the
//! one-token decode step of every row.

use std::time::Instant;

use burn::prelude::*;
use opt_data::OptTokenizer;
use opt_model::generate::Sampler;
use opt_model::{loss, KvCache, Opt};

use crate::job::{Event, EventSender, FinishReason, Job, TokenOut};
use crate::metrics::Metrics;
use crate::text::TextState;

/// One sequence being generated.
pub struct Row {
    job: Job,
    index: usize,
    events: EventSender,
    sampler: Sampler,
    generated: Vec<u32>,
    text: TextState,
    arrived: Instant,
    last_token: Option<Instant>,
    finished: bool,
    eos: u32,
}

/// A row that has been prefilled, with its own cache of the prompt.
pub struct Prefilled<B: Backend> {
    row: Row,
    cache: KvCache<B>,
}

impl Row {
    /// Sequence `index` of a request.
    pub fn new(job: Job, index: usize, events: EventSender, arrived: Instant, eos: u32) -> Self {
        Self {
            sampler: Sampler::new(&job.sampling),
            text: TextState::new(&job.stop),
            job,
            index,
            events,
            generated: Vec::new(),
            arrived,
            last_token: None,
            finished: false,
            eos,
        }
    }

    /// Run the prompt alone (so that its numbers do not depend on the batch), report the prompt's
    /// log-probabilities when asked, and choose the first token. `None` when the row is already
    /// complete (`max_tokens` 0, or it finished at its first token).
    pub fn prefill<B: Backend>(
        mut self,
        model: &Opt<B>,
        tokenizer: &OptTokenizer,
        metrics: &Metrics,
    ) -> Option<Prefilled<B>> {
        let device = model.embed_tokens.weight.device();
        let p = self.job.prompt.len();
        metrics.prompt_tokens.inc_by(p as u64);
        let ids: Vec<i64> = self.job.prompt.iter().map(|&t| t as i64).collect();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, p]), &device);
        let mut cache = KvCache::new(&model.config, 1, p, &device);
        let (h, _) = model.decode(input, None, Some(&mut cache), false);
        let e = h.dims()[2];
        let h = h.reshape([p, e]);
        if self.job.echo {
            let tokens = match self.job.logprobs {
                Some(_) => self.prompt_logprobs(model, h.clone()),
                None => Vec::new(),
            };
            self.send(Event::Prompt(tokens));
        }
        if self.job.max_tokens == 0 {
            self.finish(FinishReason::Length);
            return None;
        }
        let last = model.lm_head(h.slice(p - 1..p).unsqueeze_dim::<3>(0));
        self.accept(&host_logits(last), tokenizer, metrics);
        (!self.finished).then_some(Prefilled { row: self, cache })
    }

    /// Log-probabilities of the prompt's tokens from the prefill's hidden states [p, e], the
    /// LM head run on a few rows at a time.
    fn prompt_logprobs<B: Backend>(&self, model: &Opt<B>, h: Tensor<B, 2>) -> Vec<TokenOut> {
        let prompt = &self.job.prompt;
        let top = self.job.logprobs.unwrap_or(0);
        let mut out = vec![TokenOut {
            id: prompt[0],
            logprob: None,
            top: Vec::new(),
            text: String::new(),
        }];
        let chunk = loss::lm_head_chunk(model.config.vocab_size);
        for start in (0..prompt.len() - 1).step_by(chunk) {
            let end = (start + chunk).min(prompt.len() - 1);
            let logits = model.lm_head(h.clone().slice(start..end).unsqueeze_dim::<3>(0));
            let vocab = model.config.vocab_size;
            for (j, row) in host_logits(logits).chunks(vocab).enumerate() {
                let id = prompt[start + j + 1];
                out.push(token_out(row, id, top, String::new()));
            }
        }
        out
    }

    /// Choose the next token from this row's logits, report it, and see whether the row is done.
    fn accept(&mut self, logits: &[f32], tokenizer: &OptTokenizer, metrics: &Metrics) {
        let id = self.sampler.next(logits, &self.job.prompt, &self.generated);
        self.generated.push(id);
        let now = Instant::now();
        match self.last_token {
            None => metrics
                .time_to_first_token
                .observe((now - self.arrived).as_secs_f64()),
            Some(t) => metrics.inter_token_latency.observe((now - t).as_secs_f64()),
        }
        self.last_token = Some(now);
        metrics.generation_tokens.inc();
        let eos = !self.job.ignore_eos && id == self.eos;
        let stopped = self.text.update(tokenizer, &self.generated);
        let reason = if eos || stopped {
            Some(FinishReason::Stop)
        } else {
            (self.generated.len() >= self.job.max_tokens).then_some(FinishReason::Length)
        };
        let text = self.text.take_ready(reason.is_some());
        let top = self.job.logprobs.unwrap_or(0);
        let token = match self.job.logprobs {
            Some(_) => token_out(logits, id, top, text),
            None => TokenOut {
                id,
                logprob: None,
                top: Vec::new(),
                text,
            },
        };
        self.send(Event::Token(token));
        if let Some(reason) = reason {
            self.finish(reason);
        }
    }

    fn finish(&mut self, reason: FinishReason) {
        let text = self.text.take_ready(true);
        self.send(Event::Done { reason, text });
        self.finished = true;
    }

    fn send(&self, event: Event) {
        // A closed channel means the client went away; the next retire drops the row.
        let _ = self.events.send((self.index, event));
    }

    /// Positions this row has in the cache: the prompt and every new token but the last (which
    /// the next step feeds).
    fn cached(&self) -> usize {
        self.job.prompt.len() + self.generated.len() - 1
    }

    /// Decode steps this row may still take.
    fn remaining(&self) -> usize {
        self.job.max_tokens - self.generated.len()
    }

    fn gone(&self) -> bool {
        self.events.is_closed()
    }
}

/// The rows decoding together and their shared cache.
pub struct Batch<B: Backend> {
    rows: Vec<Row>,
    cache: Option<KvCache<B>>,
}

impl<B: Backend> Default for Batch<B> {
    fn default() -> Self {
        Self {
            rows: Vec::new(),
            cache: None,
        }
    }
}

impl<B: Backend> Batch<B> {
    /// Running rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row is running.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drop finished rows and rows whose client went away; compact the cache.
    pub fn retire(&mut self, metrics: &Metrics) {
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&r| !self.rows[r].finished && !self.rows[r].gone())
            .collect();
        if keep.len() == self.rows.len() {
            return;
        }
        let cancelled = self.rows.iter().filter(|r| !r.finished && r.gone()).count();
        metrics.cancelled_rows.inc_by(cancelled as u64);
        let cache = self.cache.take();
        let mut old: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = keep
            .iter()
            .map(|&r| old[r].take().expect("a kept row"))
            .collect();
        self.cache = match (cache, self.rows.is_empty()) {
            (Some(cache), false) => Some(self.restack(&[(&cache, &keep)])),
            _ => None,
        };
    }

    /// Add prefilled rows after the running ones.
    pub fn join(&mut self, new: Vec<Prefilled<B>>) {
        let running: Vec<usize> = (0..self.rows.len()).collect();
        let old = self.cache.take();
        let (caches, rows): (Vec<KvCache<B>>, Vec<Row>) =
            new.into_iter().map(|p| (p.cache, p.row)).unzip();
        self.rows.extend(rows);
        let one = [0usize];
        let parts: Vec<(&KvCache<B>, &[usize])> = old
            .iter()
            .map(|c| (c, &running[..]))
            .chain(caches.iter().map(|c| (c, &one[..])))
            .collect();
        self.cache = Some(self.restack(&parts));
    }

    /// One cache holding `parts`' chosen rows (in `self.rows` order), right-aligned at the
    /// longest row, with room for every row's remaining steps.
    fn restack(&self, parts: &[(&KvCache<B>, &[usize])]) -> KvCache<B> {
        let len = self.rows.iter().map(Row::cached).max().unwrap_or(0);
        let room = self.rows.iter().map(Row::remaining).max().unwrap_or(0);
        let device = &parts[0].0.device();
        let parts: Vec<(&KvCache<B>, Tensor<B, 1, Int>)> = parts
            .iter()
            .map(|(c, rows)| (*c, index_tensor::<B>(rows, device)))
            .collect();
        KvCache::stack(&parts, len, len + room)
    }

    /// Feed every row its last token and choose the next.
    pub fn step(&mut self, model: &Opt<B>, tokenizer: &OptTokenizer, metrics: &Metrics) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        let device = model.embed_tokens.weight.device();
        let b = self.rows.len();
        let len = cache.len();
        let last: Vec<i64> = self
            .rows
            .iter()
            .map(|r| *r.generated.last().expect("a prefilled row has a token") as i64)
            .collect();
        // Row r's real positions are the last `cached + 1` of `len + 1`.
        let mask: Vec<i64> = self
            .rows
            .iter()
            .flat_map(|r| {
                let real = r.cached() + 1;
                std::iter::repeat_n(0, len + 1 - real).chain(std::iter::repeat_n(1, real))
            })
            .collect();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(last, [b, 1]), &device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [b, len + 1]), &device);
        let logits = model.forward(input, Some(mask), Some(cache));
        metrics.decode_steps.inc();
        metrics.decoded_rows.inc_by(b as u64);
        let vocab = model.config.vocab_size;
        for (row, logits) in self.rows.iter_mut().zip(host_logits(logits).chunks(vocab)) {
            row.accept(logits, tokenizer, metrics);
        }
    }

    /// End every row with `Failed` (the drain timeout passed).
    pub fn abort(&mut self) {
        for row in &mut self.rows {
            row.send(Event::Failed(
                "the server shut down before this sequence finished".into(),
            ));
            row.finished = true;
        }
    }
}

/// Every position's logits of [b, t, vocab] on the host, row-major (`chunks(vocab)` per position).
fn host_logits<B: Backend>(logits: Tensor<B, 3>) -> Vec<f32> {
    logits
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("float logits")
}

/// The token with its log-probability and the `top` most likely tokens (log-softmax in f64).
fn token_out(logits: &[f32], id: u32, top: usize, text: String) -> TokenOut {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    let logprob = |i: usize| (logits[i] as f64 - lse) as f32;
    let mut best: Vec<usize> = Vec::with_capacity(top + 1);
    if top > 0 {
        for i in 0..logits.len() {
            let at = best.partition_point(|&j| logits[j] >= logits[i]);
            if at < top {
                best.insert(at, i);
                best.truncate(top);
            }
        }
    }
    TokenOut {
        id,
        logprob: Some(logprob(id as usize)),
        top: best.into_iter().map(|i| (i as u32, logprob(i))).collect(),
        text,
    }
}

fn index_tensor<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(ids, [rows.len()]), device)
}
