//! Serving on a listener until a shutdown signal, then draining: new work gets 503 while the
//! running sequences finish (bounded by the drain timeout), then the server returns.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::http::{router, AppState};

/// Serve `state` on `listener` until `shutdown` completes, then drain for at most
/// `drain_timeout` (sequences still running then end with an error) and return.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let drained = async move {
        shutdown.await;
        drain(&state, drain_timeout).await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(drained)
        .await
}

/// Refuse new work and wait for the engine to be idle, or abort what is left at the deadline.
async fn drain(state: &AppState, timeout: Duration) {
    state.draining.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + timeout;
    loop {
        let (waiting, running) = state.engine.load();
        if waiting + running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            state.engine.abort();
            // Give the engine a step to send the aborts.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
