//! What every benchmark reports beside its figure (medians, the cores in use, peak memory) and
//! what it runs on (a preset's shape, random tokens).

use anyhow::{Context, Result};
use opt::data::hash::splitmix64;
use opt::model::{preset, presets, Preset};

/// Median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// This process's peak resident memory in MiB (`VmHWM`; Linux only), host memory of every
/// backend: on CPU backends that is the tensors' memory too.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Starts `peak_rss_mib` afresh from the current resident memory (Linux: `clear_refs` 5), so
/// that a figure excludes what a setup step used and freed.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The machine's memory bandwidth as STREAM's copy counts it (bytes read + bytes written per
/// second, in GB/s): the best of 5 copies of 256 MiB of f32, split over every core.
pub fn copy_bandwidth_gb_s() -> f64 {
    const LEN: usize = 64 << 20;
    let src = vec![1.0f32; LEN];
    let mut dst = vec![0.0f32; LEN];
    let chunk = LEN.div_ceil(threads());
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        best = best.min(started.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (2 * 4 * LEN) as f64 / best / 1e9
}

/// Cores this process may use.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The preset `name`, or an error listing the choices.
pub fn find_preset(name: &str) -> Result<Preset> {
    preset(name).with_context(|| {
        let names: Vec<_> = presets().iter().map(|p| p.name).collect();
        format!(
            "unknown preset `{name}`; choose one of {}",
            names.join(", ")
        )
    })
}

/// Seeded uniform token ids in 4..vocab (no special tokens), from splitmix64.
pub fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..n)
        .map(|_| 4 + (splitmix64(&mut state) % (vocab as u64 - 4)) as u32)
        .collect()
}

/// The first GPU's name as `nvidia-smi` reports it (`None` without an NVIDIA driver).
pub fn nvidia_gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let name = text.lines().next()?.trim();
    (out.status.success() && !name.is_empty()).then(|| name.to_string())
}

/// Dense bf16 tensor-core peak in TFLOP/s of an NVIDIA GPU by name (without sparsity; NVIDIA's
/// data sheets): H100 SXM and H200 989.4, H100 PCIe 756, A100 312. `None` for other GPUs.
pub fn dense_bf16_peak_tflops(gpu: &str) -> Option<f64> {
    let name = gpu.to_ascii_uppercase();
    if name.contains("H100") && name.contains("PCIE") {
        Some(756.0)
    } else if name.contains("H100") || name.contains("H200") {
        Some(989.4)
    } else if name.contains("A100") {
        Some(312.0)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names as nvidia-smi prints them, against the table.
    #[test]
    fn peaks_by_gpu_name() {
        assert_eq!(dense_bf16_peak_tflops("NVIDIA H100 80GB HBM3"), Some(989.4));
        assert_eq!(dense_bf16_peak_tflops("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(dense_bf16_peak_tflops("NVIDIA H200"), Some(989.4));
        assert_eq!(dense_bf16_peak_tflops("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(dense_bf16_peak_tflops("NVIDIA GeForce RTX 4090"), None);
    }
}
