#![doc = include_str!("../README.md")]

pub mod api;
pub mod batch;
pub mod engine;
pub mod error;
pub mod http;
pub mod job;
pub mod metrics;
pub mod response;
pub mod server;
pub mod text;

pub use engine::{EngineHandle, EngineOptions, EngineRunner, EngineState, Job};
pub use error::ApiError;
pub use http::{router, AppState, HttpOptions};
pub use metrics::Metrics;
pub use server::{serve, shutdown_signal};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::prelude::Backend;
use opt_data::OptTokenizer;
use opt_model::{Opt, OptConfig};

/// Start the engine on a thread of its own (loading the model with `load` there) and build the
/// server's state; `config` is the model's (requests are checked against it before it loads).
pub fn start<B, F>(
    load: F,
    tokenizer: OptTokenizer,
    config: OptConfig,
    engine: EngineOptions,
    http: HttpOptions,
) -> Arc<AppState>
where
    B: Backend,
    F: FnOnce() -> Result<Opt<B>, String> + Send + 'static,
{
    let (state, runner) = prepare(load, tokenizer, config, engine, http);
    std::thread::Builder::new()
        .name("opt-engine".into())
        .spawn(move || runner.run())
        .expect("spawn the engine thread");
    state
}

/// The server's state and the engine loop, which the caller runs on a thread of its choice.
pub fn prepare<B, F>(
    load: F,
    tokenizer: OptTokenizer,
    config: OptConfig,
    engine: EngineOptions,
    http: HttpOptions,
) -> (Arc<AppState>, EngineRunner)
where
    B: Backend,
    F: FnOnce() -> Result<Opt<B>, String> + Send + 'static,
{
    let metrics = Arc::new(Metrics::new());
    let tokenizer = Arc::new(tokenizer);
    let (handle, runner) = EngineHandle::new(load, tokenizer.clone(), engine, metrics.clone());
    let state = Arc::new(AppState {
        engine: handle,
        tokenizer,
        config,
        options: http,
        metrics,
        draining: AtomicBool::new(false),
    });
    (state, runner)
}
