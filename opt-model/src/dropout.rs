//! Dropout whose masks depend on a key, not on which thread drew first.
//!
//! Burn's `Dropout` draws from the backend RNG, which is one per process (Flex keeps a static seed,
//! CubeCL a global one): with several training workers in one process, which mask a layer gets
//! would depend on thread timing. Here every mask is drawn right after seeding the backend RNG with
//! a key, under one process-wide lock, so a mask is a function of its key alone. The key is the
//! calling thread's dropout stream (set by the training loop per micro-batch, e.g. from the run's
//! seed, the step and the micro-batch's index in the update) and the call's position in the
//! forward pass (layer by layer, in order). The mask is either Burn's Bernoulli draw on the device
//! (GPU backends), or, on CPU backends (`use_host_masks`, called by the binary's backend module),
//! a counter-based hash of (key, element index) computed on the host with the 1/keep scale
//! folded in: one multiply per use instead of Burn's per-element ChaCha draw plus two multiplies
//! (about a tenth of a CPU training step), and with no lock, since it reads no shared RNG.

use std::any::TypeId;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::Distribution;
use rayon::prelude::*;

/// Serialises "seed the backend RNG, draw one mask" across threads.
static RNG_LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    /// (stream key, masks drawn so far in this stream) of the calling thread.
    static STREAM: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Use Burn's own `Dropout` instead (`opt bench train --dropout-impl burn`, to measure what keying
/// costs). Its masks depend on thread timing when several workers train in one process.
static BURN_DROPOUT: AtomicBool = AtomicBool::new(false);

/// The backends (by type) whose keyed masks are drawn on the host: CPU backends, where the host
/// is the device.
static HOST_MASK_BACKENDS: Mutex<Vec<TypeId>> = Mutex::new(Vec::new());

/// Switch between keyed masks (default) and Burn's `Dropout`, process-wide.
pub fn use_burn_dropout(on: bool) {
    BURN_DROPOUT.store(on, Ordering::Relaxed);
}

/// Draw backend `B`'s keyed masks with the host hash ([`host_mask`]) from now on (CPU backends).
pub fn use_host_masks<B: Backend>() {
    let mut backends = HOST_MASK_BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
    if !backends.contains(&TypeId::of::<B>()) {
        backends.push(TypeId::of::<B>());
    }
}

/// Whether backend `B`'s keyed masks are drawn on the host.
fn host_masks<B: Backend>() -> bool {
    let backends = HOST_MASK_BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
    backends.contains(&TypeId::of::<B>())
}

/// Start a new dropout stream on this thread: the next masks are keyed by `key` and their order.
pub fn begin_stream(key: u64) {
    STREAM.with(|s| s.set((key, 0)));
}

/// Where the calling thread's stream is: replaying from here with [`seek_stream`] draws the same
/// masks again (activation recompute runs a layer's forward twice).
pub fn stream_position() -> (u64, u64) {
    STREAM.with(|s| s.get())
}

/// Continue the calling thread's stream from a [`stream_position`].
pub fn seek_stream(position: (u64, u64)) {
    STREAM.with(|s| s.set(position));
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
    if host_masks::<B>() {
        let mask = host_mask(key, keep, x.shape(), &device).cast(x.dtype());
        return x * mask;
    }
    let mask = {
        // A poisoned lock only means another thread panicked while drawing; the RNG is re-seeded.
        let _guard = RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(&device, key);
        x.random_like(Distribution::Bernoulli(keep))
    };
    x * mask * (1.0 / keep)
}

/// The host-drawn mask `keyed` uses on CPU backends: `[shape]` of 1/keep (kept) and 0 (dropped).
/// Element i is kept when the top 32 bits of
/// mix(key + i·φ) fall below keep·2³², i.e. with probability keep (to 2⁻³²), independently of
/// every other element under splitmix64's mixing.
pub fn host_mask<B: Backend, const D: usize>(
    key: u64,
    keep: f64,
    shape: burn::tensor::Shape,
    device: &B::Device,
) -> Tensor<B, D> {
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    // Element by element on the rayon pool: each value depends on (key, i) alone.
    let values: Vec<f32> = (0..shape.num_elements())
        .into_par_iter()
        .with_min_len(1 << 15)
        .map(|i| {
            let i = i as u64;
            let bits = mix(key.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 32;
            if bits < threshold {
                scale
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
}

/// splitmix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
