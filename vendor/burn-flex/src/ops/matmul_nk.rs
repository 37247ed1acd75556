//! PATCHED (vendor/README.md): f32 activations times a compact weight, read in its own format.
//!
//! The weight is a Linear weight `[k, n]` whose storage is `n` rows of `k` (the transposed view
//! of a contiguous `[n, k]` tensor; a tied LM head is the transposed embedding), in bfloat16, or
//! in int8 with one scale per run of `block` storage elements (per tensor: one run). Its rows are
//! widened to f32 a few at a time into a buffer that stays in cache: no f32 copy of the whole
//! weight ever exists, and each weight byte is read from memory once per call.
//!
//! - `m <= SMALL_M` rows (decoding): tiles of 4 weight rows against up to 4 activation rows at a
//!   time, 16 f32 lanes per accumulator; the activation rows stay in L1/L2 across tiles.
//! - more rows (prefill, scoring): panels of weight rows widened, then multiplied by gemm.
//!
//! Both split the weight rows over the rayon pool. The kernels are compiled for AVX-512 and for
//! AVX2 + FMA (chosen at run time) and portably.

use alloc::vec;
use burn_backend::DType;
use burn_std::{Bytes, Shape, bf16};
use core::ops::Range;

use crate::{FlexTensor, Layout};

/// Up to this many activation rows take the tiled kernel, more take gemm on widened panels.
const SMALL_M: usize = 16;
/// f32 lanes per accumulator.
const LANES: usize = 16;
/// Activation rows per tile.
const MR: usize = 4;
/// Weight rows per tile.
const NR: usize = 4;
/// Tasks per thread of the tiled kernel (rayon balances them).
const TASKS_PER_THREAD: usize = 4;
/// f32 elements of a widened gemm panel (512 KiB).
const PANEL_ELEMS: usize = 128 * 1024;
/// Panel widths are multiples of this: gemm computes a panel as the transposed product, whose
/// rows it takes 64 at a time (AVX-512), and a width of 84 ran as 64 + a half-empty 32.
const PANEL_STEP: usize = 64;

/// A weight of `n` rows of `k` elements, in storage order.
#[derive(Clone, Copy)]
pub(crate) enum NkWeight<'a> {
    /// bfloat16 rows.
    Bf16(&'a [bf16]),
    /// int8 rows: storage element `i` is `values[i] * scales[i / block]`.
    I8 {
        values: &'a [i8],
        scales: &'a [f32],
        block: usize,
    },
}

impl NkWeight<'_> {
    /// Storage elements `range`, widened to f32 into `out` (of the same length).
    #[inline(always)]
    fn widen(&self, range: Range<usize>, out: &mut [f32]) {
        match *self {
            Self::Bf16(w) => {
                for (o, v) in out.iter_mut().zip(&w[range]) {
                    *o = f32::from_bits((v.to_bits() as u32) << 16);
                }
            }
            Self::I8 {
                values,
                scales,
                block,
            } => {
                let mut i = range.start;
                while i < range.end {
                    let run = i / block;
                    let end = range.end.min((run + 1) * block);
                    let scale = scales[run];
                    let dst = &mut out[i - range.start..end - range.start];
                    for (o, &q) in dst.iter_mut().zip(&values[i..end]) {
                        *o = q as f32 * scale;
                    }
                    i = end;
                }
            }
        }
    }
}

/// `(k, n, start offset)` when `layout` is `[1.., k, n]` over `n` contiguous rows of `k`.
pub(crate) fn nk_view(layout: &Layout) -> Option<(usize, usize, usize)> {
    let shape = layout.shape();
    let rank = shape.num_dims();
    if rank < 2 || (0..rank - 2).any(|d| shape[d] != 1) {
        return None;
    }
    let (k, n) = (shape[rank - 2], shape[rank - 1]);
    let strides = layout.strides();
    let k_ok = k == 1 || strides[rank - 2] == 1;
    let n_ok = n == 1 || strides[rank - 1] == k as isize;
    (k_ok && n_ok).then_some((k, n, layout.start_offset()))
}

/// `lhs` (f32, `[.., m, k]`) times the `[k, n]` weight `weight`: f32 `[.., m, n]`.
pub(crate) fn matmul_nk(
    lhs: FlexTensor,
    rhs_rank: usize,
    k: usize,
    n: usize,
    weight: NkWeight,
) -> FlexTensor {
    let lhs = lhs.to_contiguous();
    let lhs_shape = lhs.layout().shape();
    let lhs_rank = lhs_shape.num_dims();
    assert_eq!(
        lhs_shape[lhs_rank - 1],
        k,
        "matmul: inner dimensions must match"
    );
    let m = lhs_shape.num_elements() / k.max(1);
    let x = &lhs.storage::<f32>()[..m * k];

    let mut out_dims = vec![1; rhs_rank.saturating_sub(lhs_rank)];
    out_dims.extend_from_slice(&lhs_shape[..lhs_rank - 1]);
    out_dims.push(n);
    let mut out = vec![0.0f32; m * n];
    if m > 0 && n > 0 && k > 0 {
        let kernel = if m <= SMALL_M { tiled_task } else { panel_task };
        let rows_per_task = if m <= SMALL_M {
            // Few long runs of weight rows: each task streams its rows from memory, and the
            // hardware prefetcher needs long runs to reach full bandwidth.
            n.div_ceil(TASKS_PER_THREAD * threads())
                .next_multiple_of(NR)
        } else {
            (PANEL_ELEMS / k).clamp(PANEL_STEP, 512) / PANEL_STEP * PANEL_STEP
        };
        let job = Job {
            x,
            m,
            k,
            n,
            weight,
            out: SendPtr(out.as_mut_ptr()),
        };
        let tasks = n.div_ceil(rows_per_task);
        let run = |t: usize| {
            let rows = t * rows_per_task..n.min((t + 1) * rows_per_task);
            kernel(&job, rows)
        };
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            (0..tasks).into_par_iter().for_each(run);
        }
        #[cfg(not(feature = "rayon"))]
        (0..tasks).for_each(run);
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(out_dims)),
        DType::F32,
    )
}

/// Threads of the pool the tasks run on.
fn threads() -> usize {
    #[cfg(feature = "rayon")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "rayon"))]
    1
}

/// One call's operands; tasks write disjoint columns of `out` ([m, n]).
struct Job<'a> {
    x: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    weight: NkWeight<'a>,
    out: SendPtr,
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Output columns `rows` (weight rows) by tiles, for few activation rows.
fn tiled_task(job: &Job, rows: Range<usize>) {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return unsafe { tiled_avx512(job, rows) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return unsafe { tiled_avx2(job, rows) };
        }
    }
    tiled::<false>(job, rows)
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tiled_avx512(job: &Job, rows: Range<usize>) {
    tiled_with(job, rows, |x, w, k, r| match r {
        1 => pad_rows(avx512::dot_tile::<1>(x, w, k)),
        2 => pad_rows(avx512::dot_tile::<2>(x, w, k)),
        3 => pad_rows(avx512::dot_tile::<3>(x, w, k)),
        _ => avx512::dot_tile::<MR>(x, w, k),
    })
}

/// The tile kernel in AVX-512 intrinsics (LLVM's auto-vectorizer keeps 16-lane arrays in
/// 128-bit registers with shuffles).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
mod avx512 {
    use super::{LANES, NR};
    use core::arch::x86_64::*;

    /// Dot products of `R` activation rows (`x`, rows of `k`) with the `NR` rows of `w`.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn dot_tile<const R: usize>(x: &[f32], w: &[f32], k: usize) -> [[f32; NR]; R] {
        assert!(x.len() >= R * k && w.len() >= NR * k);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); NR]; R];
        let mut kk = 0;
        // SAFETY: every load reads LANES elements below k of a row of x (R rows) or w (NR
        // rows), or is masked to the elements below k.
        unsafe {
            while kk + LANES <= k {
                let wv: [__m512; NR] =
                    core::array::from_fn(|c| _mm512_loadu_ps(wp.add(c * k + kk)));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_ps(xp.add(r * k + kk));
                    for (a, &wc) in acc_r.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xv, wc, *a);
                    }
                }
                kk += LANES;
            }
            if kk < k {
                let mask: __mmask16 = (1u32 << (k - kk)) as u16 - 1;
                let wv: [__m512; NR] =
                    core::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, wp.add(c * k + kk)));
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_ps(mask, xp.add(r * k + kk));
                    for (a, &wc) in acc_r.iter_mut().zip(&wv) {
                        *a = _mm512_fmadd_ps(xv, wc, *a);
                    }
                }
            }
        }
        acc.map(|row| row.map(|a| _mm512_reduce_add_ps(a)))
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn tiled_avx2(job: &Job, rows: Range<usize>) {
    tiled::<true>(job, rows)
}

#[inline(always)]
fn tiled<const FMA: bool>(job: &Job, rows: Range<usize>) {
    tiled_with(job, rows, |x, w, k, r| match r {
        1 => pad_rows(dot_tile::<FMA, 1>(x, w, k)),
        2 => pad_rows(dot_tile::<FMA, 2>(x, w, k)),
        3 => pad_rows(dot_tile::<FMA, 3>(x, w, k)),
        _ => dot_tile::<FMA, MR>(x, w, k),
    })
}

/// Output columns `rows`: each tile of `NR` weight rows widened once, then `tile(x, w, k, r)`
/// with `r` = min(MR, rows left) activation rows from `x`.
#[inline(always)]
fn tiled_with(
    job: &Job,
    rows: Range<usize>,
    tile: impl Fn(&[f32], &[f32], usize, usize) -> [[f32; NR]; MR],
) {
    let k = job.k;
    // Missing weight rows of the last tile stay zero; their outputs are not written.
    let mut buf = vec![0.0f32; NR * k];
    let mut j = rows.start;
    while j < rows.end {
        let cols = NR.min(rows.end - j);
        job.weight
            .widen(j * k..(j + cols) * k, &mut buf[..cols * k]);
        let mut r0 = 0;
        while r0 < job.m {
            let tile = tile(&job.x[r0 * k..], &buf, k, (job.m - r0).min(MR));
            for (r, row) in tile.iter().enumerate().take(job.m - r0) {
                for (c, &v) in row.iter().enumerate().take(cols) {
                    // SAFETY: row r0 + r < m, column j + c < n, and no other task owns column j + c.
                    unsafe { *job.out.0.add((r0 + r) * job.n + j + c) = v };
                }
            }
            r0 += MR;
        }
        j += cols;
    }
}

/// `R` rows of results padded to `MR`.
#[inline(always)]
fn pad_rows<const R: usize>(tile: [[f32; NR]; R]) -> [[f32; NR]; MR] {
    let mut out = [[0.0; NR]; MR];
    out[..R].copy_from_slice(&tile);
    out
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Dot products of `R` activation rows (`x`, rows of `k`) with the `NR` rows of `w`.
#[inline(always)]
fn dot_tile<const FMA: bool, const R: usize>(x: &[f32], w: &[f32], k: usize) -> [[f32; NR]; R] {
    assert!(x.len() >= (R - 1) * k + k && w.len() >= NR * k);
    let mut acc = [[[0.0f32; LANES]; NR]; R];
    let body = k / LANES * LANES;
    let mut kk = 0;
    while kk < body {
        let mut wv = [[0.0f32; LANES]; NR];
        for (c, v) in wv.iter_mut().enumerate() {
            // SAFETY: c * k + kk + LANES <= NR * k <= w.len().
            *v = unsafe { *(w.as_ptr().add(c * k + kk) as *const [f32; LANES]) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: r * k + kk + LANES <= R * k <= x.len().
            let xv = unsafe { *(x.as_ptr().add(r * k + kk) as *const [f32; LANES]) };
            for (acc_rc, wv_c) in acc_r.iter_mut().zip(&wv) {
                for l in 0..LANES {
                    acc_rc[l] = madd::<FMA>(xv[l], wv_c[l], acc_rc[l]);
                }
            }
        }
        kk += LANES;
    }
    let mut out = [[0.0f32; NR]; R];
    for r in 0..R {
        for c in 0..NR {
            let lanes = &acc[r][c];
            let mut half = [0.0f32; LANES / 2];
            for l in 0..LANES / 2 {
                half[l] = lanes[l] + lanes[l + LANES / 2];
            }
            let mut sum = half.iter().sum::<f32>();
            for t in body..k {
                sum = madd::<FMA>(x[r * k + t], w[c * k + t], sum);
            }
            out[r][c] = sum;
        }
    }
    out
}

/// Output columns `rows` through gemm on the widened panel of those weight rows.
fn panel_task(job: &Job, rows: Range<usize>) {
    let (k, cols) = (job.k, rows.len());
    let mut panel = vec![0.0f32; cols * k];
    job.weight.widen(rows.start * k..rows.end * k, &mut panel);
    // SAFETY: the panel is [k, cols] with column stride k; out columns rows.start.. of [m, n]
    // belong to this task alone.
    unsafe {
        gemm::gemm(
            job.m,
            cols,
            k,
            job.out.0.add(rows.start),
            1,
            job.n as isize,
            false,
            job.x.as_ptr(),
            1,
            k as isize,
            panel.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
