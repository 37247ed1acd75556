//! Graceful stop: the first SIGINT/SIGTERM (Ctrl-C, a scheduler's preemption notice) asks the run
//! to stop after the current update, with a checkpoint; a second one exits at once, leaving the
//! previous checkpoint as it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::flag;

/// Set by the first SIGINT/SIGTERM.
#[derive(Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Install the handlers: a second signal exits with status 130 (128 + SIGINT's number).
    pub fn install() -> Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        for signal in [SIGINT, SIGTERM] {
            // Registered first, so it sees the flag as the previous signal left it.
            flag::register_conditional_shutdown(signal, 130, requested.clone())
                .context("installing the signal handlers")?;
            flag::register(signal, requested.clone()).context("installing the signal handlers")?;
        }
        Ok(Self(requested))
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
