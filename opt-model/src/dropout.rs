//! Dropout whose masks depend on a key, not on which thread drew first.
//!
//! Burn's `Dropout` draws from the backend RNG, which is one per process (Flex keeps a static seed,
//! CubeCL a global one): with several training workers in one process, which mask a layer gets
//! would depend on thread timing. Here every mask is drawn right after seeding the backend RNG with
//! a key, under one process-wide lock, so a mask is a function of its key alone. The key is the
//! calling thread's dropout stream (set by the training loop per micro-batch, e.g. from the run's
//! seed, the step and the micro-batch's index in the update) and the call's position in the
//! forward pass (layer by layer, in order). The mask itself is Burn's Bernoulli draw, on the device.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::Distribution;

/// Serialises "seed the backend RNG, draw one mask" across threads.
static RNG_LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    /// (stream key, masks drawn so far in this stream) of the calling thread.
    static STREAM: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Use Burn's own `Dropout` instead (`opt bench train --dropout-impl burn`, to measure what keying
/// costs). Its masks depend on thread timing when several workers train in one process.
static BURN_DROPOUT: AtomicBool = AtomicBool::new(false);

/// Switch between keyed masks (default) and Burn's `Dropout`, process-wide.
pub fn use_burn_dropout(on: bool) {
    BURN_DROPOUT.store(on, Ordering::Relaxed);
}

/// Start a new dropout stream on this thread: the next masks are keyed by `key` and their order.
pub fn begin_stream(key: u64) {
    STREAM.with(|s| s.set((key, 0)));
}

/// A stream key from the parts that identify one forward pass (e.g. seed, step, micro-batch).
pub fn stream_key(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243F_6A88_85A3_08D3, |acc, &p| {
        mix(acc ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    })
}

/// `dropout` applied to `x` in training (autodiff on and p > 0), with a keyed mask; else `x`.
pub fn keyed<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if !B::ad_enabled(&device) || dropout.prob == 0.0 {
        return x;
    }
    if BURN_DROPOUT.load(Ordering::Relaxed) {
        return dropout.forward(x);
    }
    let key = STREAM.with(|s| {
        let (stream, n) = s.get();
        s.set((stream, n + 1));
        mix(stream ^ mix(n.wrapping_add(1)))
    });
    let keep = 1.0 - dropout.prob;
    let mask = {
        // A poisoned lock only means another thread panicked while drawing; the RNG is re-seeded.
        let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&device, key);
        x.random_like(Distribution::Bernoulli(keep))
    };
    x * mask * (1.0 / keep)
}

/// splitmix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
