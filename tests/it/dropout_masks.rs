//! The host-drawn dropout masks of CPU backends (`opt_model::dropout::host_mask`) against what a
//! Bernoulli(keep) mask must satisfy: values 0 or 1/keep, a kept fraction within 5 standard
//! deviations of keep, neighbours kept independently (P(both) = keep²), the same mask for the
//! same key and independent masks for different keys.

use crate::common::on_backend;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::dropout::host_mask;
use opt::BackendTask;

const N: usize = 1 << 20;

fn mask<B: Backend>(key: u64, keep: f64, device: &B::Device) -> Vec<f32> {
    host_mask::<B, 2>(key, keep, Shape::new([N / 1024, 1024]), device)
        .into_data()
        .to_vec()
        .unwrap()
}

/// |observed − expected| of a frequency over `n` trials, in standard deviations.
fn sigmas(count: usize, n: usize, p: f64) -> f64 {
    let observed = count as f64 / n as f64;
    (observed - p).abs() / (p * (1.0 - p) / n as f64).sqrt()
}

struct HostMasks;

impl BackendTask for HostMasks {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for keep in [0.9, 0.5, 0.25] {
            let a = mask::<B>(0x1234_5678, keep, &device);
            let scale = (1.0 / keep) as f32;
            assert!(
                a.iter().all(|&v| v == 0.0 || v == scale),
                "values 0 or 1/keep"
            );
            let kept: Vec<bool> = a.iter().map(|&v| v != 0.0).collect();
            let count = kept.iter().filter(|&&k| k).count();
            let s = sigmas(count, N, keep);
            assert!(
                s < 5.0,
                "keep {keep}: kept fraction {count}/{N} is {s:.1} sigma off"
            );
            let pairs = kept.windows(2).filter(|w| w[0] && w[1]).count();
            let s = sigmas(pairs, N - 1, keep * keep);
            assert!(
                s < 5.0,
                "keep {keep}: neighbours kept together {s:.1} sigma off keep²"
            );

            assert_eq!(
                a,
                mask::<B>(0x1234_5678, keep, &device),
                "same key, same mask"
            );
            let b = mask::<B>(0x1234_5679, keep, &device);
            let both = a.iter().zip(&b).filter(|(x, y)| **x != 0.0 && **y != 0.0);
            let s = sigmas(both.count(), N, keep * keep);
            assert!(
                s < 5.0,
                "keep {keep}: masks of keys k and k+1 correlate ({s:.1} sigma)"
            );
        }
    }
}

#[test]
fn host_dropout_masks_are_bernoulli_and_keyed() {
    on_backend(HostMasks);
}
