//! `opt bench serve`: a load generator. N concurrent clients each send M streamed greedy requests
//! (random token prompts of a fixed length, exactly `--new-tokens` new tokens) to a server it
//! starts in this process (random weights of a preset) or to `--url`; reports aggregate new
//! tokens/s, time to first token and inter-token latency for each client count.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use opt::data::OptTokenizer;
use opt::serve::{EngineOptions, HttpOptions};
use opt::train::{init_model, INIT_STD};
use opt::{BackendKind, BackendTask};
use serde_json::json;

use crate::measure::{find_preset, median, random_tokens, threads};

/// Arguments of `opt bench serve`.
#[derive(Args, Clone)]
pub struct BenchServeArgs {
    /// A running server (default: start one in this process with random weights of --preset).
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long, default_value = "125m")]
    pub preset: String,
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    pub clients: Vec<usize>,
    /// Requests per client (one after another).
    #[arg(long, default_value_t = 3)]
    pub requests: usize,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Exactly this many new tokens per request (`ignore_eos`).
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// The started server's `--max-batch`.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// Print one JSON object per client count.
    #[arg(long)]
    pub json: bool,
}

/// `opt bench serve`
pub fn run(a: BenchServeArgs) -> Result<()> {
    if a.clients.contains(&0) || a.requests == 0 || a.prompt_len == 0 || a.new_tokens == 0 {
        bail!("--clients, --requests, --prompt-len and --new-tokens must be at least 1");
    }
    match a.url.clone() {
        Some(url) => measure_all(&a, &url, 50_000),
        None => opt::backend::run(a.backend.parse::<BackendKind>()?, Started(a))?,
    }
}

/// A server on random weights in this process, on a free loopback port.
struct Started(BenchServeArgs);

impl BackendTask for Started {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let p = find_preset(&a.preset)?;
        let (config, vocab) = (p.config.clone(), p.config.vocab_size);
        let served = config.clone();
        let load = move || Ok(init_model::<B>(&config, INIT_STD, &device).valid());
        let engine = EngineOptions {
            max_batch: a.max_batch,
            max_queue: 4096,
            ..Default::default()
        };
        let http = HttpOptions {
            model_name: p.name.to_string(),
            api_key: None,
            max_body_bytes: 1 << 20,
        };
        let (state, runner) =
            opt::serve::prepare(load, OptTokenizer::gpt2()?, served, engine, http);
        // The engine on this thread (a thread of the kernels' pool, as in `opt serve`); the
        // server and the clients on others.
        let clients = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
            let url = format!("http://{}", listener.local_addr()?);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = runtime.spawn(opt::serve::serve(
                listener,
                state,
                async move {
                    let _ = stopped.await;
                },
                Duration::from_secs(1),
            ));
            let result = wait_ready(&url).and_then(|_| measure_all(&a, &url, vocab));
            let _ = stop.send(());
            let _ = runtime.block_on(server);
            result
        });
        runner.run();
        clients
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
    }
}

fn wait_ready(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        if ureq::get(&format!("{url}/health")).call().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not become ready")
}

/// Timings of one streamed request.
struct Timing {
    first_token: f64,
    gaps: Vec<f64>,
    tokens: usize,
}

fn measure_all(a: &BenchServeArgs, url: &str, vocab: usize) -> Result<()> {
    // One untimed request: the first call's allocations and kernel choices.
    request(url, a, &random_tokens(a.prompt_len - 1, vocab, 99))?;
    for &clients in &a.clients {
        measure(a, url, clients, vocab)?;
    }
    Ok(())
}

fn measure(a: &BenchServeArgs, url: &str, clients: usize, vocab: usize) -> Result<()> {
    let started = Instant::now();
    let url: Arc<str> = url.into();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (url, a) = (url.clone(), a.clone());
            std::thread::spawn(move || -> Result<Vec<Timing>> {
                (0..a.requests)
                    .map(|r| {
                        let seed = 1000 + (c * a.requests + r) as u64;
                        request(&url, &a, &random_tokens(a.prompt_len - 1, vocab, seed))
                    })
                    .collect()
            })
        })
        .collect();
    let mut timings = Vec::new();
    for h in handles {
        timings.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = timings.iter().map(|t| t.tokens).sum();
    let ttft: Vec<f64> = timings.iter().map(|t| t.first_token).collect();
    let gaps: Vec<f64> = timings.iter().flat_map(|t| t.gaps.clone()).collect();
    let v = json!({
        "clients": clients, "requests_per_client": a.requests, "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens, "preset": a.preset, "backend": a.backend,
        "server": a.url.clone().unwrap_or_else(|| format!("in-process, max_batch {}", a.max_batch)),
        "threads": threads(), "seconds": seconds,
        "new_tokens_per_second": tokens as f64 / seconds,
        "ttft_p50_ms": 1e3 * quantile(&ttft, 0.5), "ttft_p99_ms": 1e3 * quantile(&ttft, 0.99),
        "itl_p50_ms": 1e3 * median(gaps.clone()), "itl_p99_ms": 1e3 * quantile(&gaps, 0.99),
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "bench serve: {clients:>2} clients x {} requests: {:>7.1} new tokens/s, TTFT p50 {:.0} ms p99 {:.0} ms, inter-token p50 {:.1} ms p99 {:.1} ms",
            a.requests, v["new_tokens_per_second"].as_f64().unwrap_or(0.0),
            v["ttft_p50_ms"].as_f64().unwrap_or(0.0), v["ttft_p99_ms"].as_f64().unwrap_or(0.0),
            v["itl_p50_ms"].as_f64().unwrap_or(0.0), v["itl_p99_ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}

/// One streamed greedy request; a chunk per token.
fn request(url: &str, a: &BenchServeArgs, body_tokens: &[u32]) -> Result<Timing> {
    let mut prompt = vec![2u32];
    prompt.extend_from_slice(body_tokens);
    let body = json!({
        "prompt": prompt, "max_tokens": a.new_tokens, "temperature": 0,
        "ignore_eos": true, "stream": true,
    });
    let started = Instant::now();
    let response = ureq::post(&format!("{url}/v1/completions"))
        .send_json(body)
        .with_context(|| format!("POST {url}/v1/completions"))?;
    let mut last: Option<Instant> = None;
    let mut timing = Timing {
        first_token: f64::NAN,
        gaps: Vec::new(),
        tokens: 0,
    };
    for line in std::io::BufReader::new(response.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data)?;
        if chunk.get("error").is_some() {
            bail!("the server failed a request: {data}");
        }
        if chunk["choices"][0]["finish_reason"].is_null() {
            let now = Instant::now();
            match last {
                None => timing.first_token = (now - started).as_secs_f64(),
                Some(t) => timing.gaps.push((now - t).as_secs_f64()),
            }
            last = Some(now);
            timing.tokens += 1;
        }
    }
    Ok(timing)
}

/// The q-quantile of `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}
