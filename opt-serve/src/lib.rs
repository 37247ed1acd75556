#![doc = include_str!("../README.md")]

pub mod api;
pub mod batch;
pub mod engine;
pub mod error;
pub mod http;
pub mod metrics;
pub mod response;
pub mod server;
pub mod text;

pub use api::ModelLimits;
pub use engine::{EngineHandle, EngineOptions, EngineState, Job};
pub use error::ApiError;
pub use http::{router, AppState, HttpOptions};
pub use metrics::Metrics;
pub use server::{serve, shutdown_signal};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::prelude::Backend;
use opt_data::OptTokenizer;
use opt_model::Opt;

/// Start the engine (loading the model with `load` on its thread) and build the server's state.
pub fn start<B, F>(
    load: F,
    tokenizer: OptTokenizer,
    limits: ModelLimits,
    engine: EngineOptions,
    http: HttpOptions,
) -> Arc<AppState>
where
    B: Backend,
    F: FnOnce() -> Result<Opt<B>, String> + Send + 'static,
{
    let metrics = Arc::new(Metrics::new());
    let tokenizer = Arc::new(tokenizer);
    let handle = EngineHandle::start(load, tokenizer.clone(), engine, metrics.clone());
    Arc::new(AppState {
        engine: handle,
        tokenizer,
        limits,
        options: http,
        metrics,
        draining: AtomicBool::new(false),
    })
}
