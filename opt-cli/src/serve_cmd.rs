//! `opt serve`: an OpenAI-compatible completion server (the `opt-serve` library behind flags).

use crate::weights_arg::WeightsArg;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use opt::data::OptTokenizer;
use opt::model::OptConfig;
use opt::serve::{EngineOptions, EngineState, HttpOptions};
use opt::{BackendKind, BackendTask};

/// Arguments of `opt serve`.
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// HF-layout model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Tokenizer directory (default: the model directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    #[command(flatten)]
    pub weights: WeightsArg,
    /// Address to listen on. The server has no TLS: keep it on loopback, or put it behind a
    /// TLS proxy and set --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients give (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Rows decoded together.
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Sequences waiting for a row; more get HTTP 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Prompt tokens prefilled in one engine step (a longer prompt is admitted alone).
    #[arg(long, default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// Largest request body in bytes; larger ones get HTTP 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Require `Authorization: Bearer KEY` (also read from OPT_API_KEY).
    #[arg(long, env = "OPT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds running sequences may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
}

/// `opt serve`
pub fn serve(args: ServeArgs) -> Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 || args.max_batch_tokens == 0 {
        bail!("--max-batch, --max-queue and --max-batch-tokens must be at least 1");
    }
    if !(args.drain_timeout >= 0.0 && args.drain_timeout.is_finite()) {
        bail!("--drain-timeout must be a number of seconds >= 0");
    }
    let kind: BackendKind = args.backend.parse()?;
    args.weights.check(kind)?;
    opt::backend::run(kind, Serve(args))?
}

struct Serve(ServeArgs);

impl BackendTask for Serve {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let config = OptConfig::load(a.model.join("config.json"))?;
        let tok_dir = a.tokenizer.clone().unwrap_or_else(|| a.model.clone());
        let tokenizer = OptTokenizer::from_dir(&tok_dir).with_context(|| {
            format!(
                "{} has no tokenizer files; pass --tokenizer DIR",
                tok_dir.display()
            )
        })?;
        if tokenizer.vocab_size() > config.vocab_size {
            bail!(
                "the tokenizer in {} has {} ids but the model's vocabulary has {}: they do not belong together",
                tok_dir.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            );
        }
        let name = a
            .served_model_name
            .clone()
            .unwrap_or_else(|| model_name(&a.model));
        let engine = EngineOptions {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            max_batch_tokens: a.max_batch_tokens,
        };
        let http = HttpOptions {
            model_name: name.clone(),
            api_key: a.api_key.clone(),
            max_body_bytes: a.max_body_bytes,
        };
        let (dir, weights) = (a.model.clone(), a.weights);
        let load = move || {
            weights
                .load::<B::InnerBackend>(&dir, &device)
                .map_err(|e| e.to_string())
        };
        let (state, runner) = opt::serve::prepare(load, tokenizer, config, engine, http);
        // The HTTP side on threads of its own; the engine on this one, a thread of the pool the
        // CPU kernels run on (see `main.rs`). On a thread outside the pool, whose idle workers
        // spin against it, 8 streaming clients got 37 new tokens/s of opt-125m instead of 63.
        let server = std::thread::spawn(move || http_server(a, name, state));
        runner.run();
        server
            .join()
            .map_err(|_| anyhow::anyhow!("the HTTP server thread panicked"))?
    }
}

/// Listen, serve until SIGTERM/SIGINT (or until the model fails to load), drain, return.
fn http_server(
    a: ServeArgs,
    name: String,
    state: std::sync::Arc<opt::serve::AppState>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", a.host, a.port)
            .parse()
            .with_context(|| format!("--host {} --port {} is not an address", a.host, a.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "opt serve: model `{name}` ({}) on {} backend, listening on http://{local}{}",
            a.model.display(),
            a.backend,
            if a.api_key.is_some() { " (API key required)" } else { "" }
        );
        let engine = state.engine.clone();
        let failed = async move {
            loop {
                if let EngineState::Failed(why) = engine.state() {
                    return why;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<String>();
        let shutdown = async move {
            tokio::select! {
                _ = opt::serve::shutdown_signal() => eprintln!("opt serve: draining (new requests get 503)"),
                why = failed => { let _ = stop_tx.send(why); }
            }
        };
        let drain = Duration::from_secs_f64(a.drain_timeout);
        opt::serve::serve(listener, state, shutdown, drain).await?;
        match stop_rx.await {
            Ok(why) => bail!("the model could not be served: {why}"),
            Err(_) => {
                eprintln!("opt serve: stopped");
                Ok(())
            }
        }
    })
}

/// A model directory's name (`runs/x/model` gives `x`).
fn model_name(dir: &std::path::Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let last = dir.file_name().map(|s| s.to_string_lossy().into_owned());
    match last.as_deref() {
        Some("model") => dir
            .parent()
            .and_then(|p| p.file_name())
            .map_or("opt".into(), |s| s.to_string_lossy().into_owned()),
        Some(s) => s.to_string(),
        None => "opt".into(),
    }
}
