//! The GPU backends' memory pools (`opt::backend::memory_configuration`): one tensor larger than
//! the largest sliced page (128 MiB) gets a page of its own, sized to it, and is usable end to
//! end. cubecl's default preset would slice it out of a page of a quarter of the device's memory.
//! Runs on wgpu (lavapipe in CI); the CPU backends have no pool and skip it.

use crate::common::on_backend;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::BackendTask;

struct LargeTensor;

impl BackendTask for LargeTensor {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let Some(before) = opt::backend::device_memory_reserved::<B>(&device) else {
            println!("skipped: this backend has no device memory pool");
            return;
        };
        // 160 MiB of f32, more than the 128 MiB pages: 41,943,040 values.
        let n = 160 << 18;
        let ramp = Tensor::<B::InnerBackend, 1, Int>::arange(0..n as i64, &device).float();
        let x = ramp.clone() * 2.0 - ramp; // two more tensors of that size, read and written
        let reserved = opt::backend::device_memory_reserved::<B>(&device).unwrap() - before;
        let bytes = 4 * n as u64;
        // Each value below 2^24 is exact in f32; the last ones are past the first 128 MiB.
        let tail: Vec<f32> = x.clone().slice(n - 3..n).into_data().to_vec().unwrap();
        assert_eq!(tail, [(n - 3) as f32, (n - 2) as f32, (n - 1) as f32]);
        let head: Vec<f32> = x.slice(0..3).into_data().to_vec().unwrap();
        assert_eq!(head, [0.0, 1.0, 2.0]);
        println!(
            "a {} MiB tensor: the pool reserved {} MiB more",
            bytes >> 20,
            reserved >> 20
        );
        // Pages of their own, sized to the tensors (a few of them live at once), not a quarter
        // of the device's memory per page.
        assert!(reserved >= bytes, "{reserved} bytes reserved for {bytes}");
        assert!(
            reserved <= 4 * bytes + (256 << 20),
            "{reserved} bytes reserved for {bytes}"
        );
    }
}

#[test]
fn a_tensor_larger_than_a_pool_page_is_usable() {
    on_backend(LargeTensor);
}
