//! The GPU backends' memory pools (`opt::backend::memory_configuration`), on a wgpu device of the
//! test's own (so that no other test's allocations enter its figures): a tensor larger than the
//! 32 MiB largest slice gets a page of its own, exactly its size, where cubecl's default preset
//! would slice it out of a page of the binding limit (128 MiB here); and it is usable end to end.
//! Runs with `OPT_BACKEND=wgpu` (lavapipe in CI); the other backends skip it.

#[test]
fn a_tensor_larger_than_a_pool_page_gets_a_page_of_its_size() {
    if opt::BackendKind::from_env().unwrap() != opt::BackendKind::Wgpu {
        println!("skipped: runs with OPT_BACKEND=wgpu");
        return;
    }
    #[cfg(feature = "wgpu")]
    own_device::run();
}

#[cfg(feature = "wgpu")]
mod own_device {
    use burn::backend::wgpu::WgpuDevice;
    use burn::backend::Wgpu;
    use burn::prelude::*;

    pub fn run() {
        // The CPU adapter (lavapipe): a second device beside the tests' default one.
        let device = WgpuDevice::Cpu;
        opt::backend::init_wgpu(&device);
        // Synced first: with `fusion` the ops are queued until then.
        let reserved = || {
            <Wgpu as Backend>::sync(&device).unwrap();
            opt::backend::device_memory_reserved::<Wgpu>(&device).unwrap()
        };
        let before = reserved();
        // 96 MiB of f32: above every slice (32 MiB), under WebGPU's 128 MiB binding limit.
        let n = 24 << 20;
        let bytes = 4 * n as u64;
        let x = Tensor::<Wgpu, 1>::zeros([n], &device);
        let first = reserved() - before;
        let y = x.add_scalar(2.0);
        let second = reserved() - before;
        let tail: Vec<f32> = y.clone().slice(n - 3..n).into_data().to_vec().unwrap();
        assert_eq!(
            tail, [2.0; 3],
            "the end of the tensor, past 64 MiB, is written and read"
        );
        let head: Vec<f32> = y.slice(0..3).into_data().to_vec().unwrap();
        assert_eq!(head, [2.0; 3]);
        println!(
            "a {} MiB tensor: {} MiB reserved, {} MiB with its sum",
            bytes >> 20,
            first >> 20,
            second >> 20
        );
        assert_eq!(first, bytes, "the first tensor's page is its size");
        assert!(
            second <= 2 * bytes,
            "the result reuses the page or takes one of its size"
        );
    }
}
