//! PATCHED (whole file, see vendor/README.md): the backward of `layer_norm`.
//!
//! Upstream differentiates `layer_norm` through its default decomposition (mean, subtract,
//! square, mean, add, sqrt, divide, scale, shift: nine tracked ops whose backward adds about
//! twenty more). Here the forward is the inner backend's `layer_norm` (one fused kernel on flex)
//! and the backward is the closed form, from the saved input and gamma:
//!   x̂ = (x − μ)·r, r = (σ² + ε)^−½,  dx̂ = dy·γ,
//!   dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)),  dγ = Σ dy·x̂,  dβ = Σ dy  (sums over all rows).

use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, Shape, TensorMetadata};

/// Gradients of (input, gamma, beta) for `grad` = d loss / d output of
/// `layer_norm(x, gamma, beta, epsilon)` over the last dim.
pub(crate) fn layer_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    epsilon: f64,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let shape = x.shape();
    let last = shape.num_dims() - 1;
    let d = shape[last];
    let rows = shape.num_elements() / d.max(1);

    let mean = B::float_mean_dim(x.clone(), last);
    let centered = B::float_sub(x, mean);
    let var = B::float_mean_dim(B::float_mul(centered.clone(), centered.clone()), last);
    let rstd = B::float_recip(B::float_sqrt(B::float_add_scalar(var, epsilon.into())));
    let x_hat = B::float_mul(centered, rstd.clone());

    let mut row_shape = alloc::vec![1; shape.num_dims()];
    row_shape[last] = d;
    let d_x_hat = B::float_mul(grad.clone(), B::float_reshape(gamma, Shape::from(row_shape)));
    let mean_d = B::float_mean_dim(d_x_hat.clone(), last);
    let mean_dx = B::float_mean_dim(B::float_mul(d_x_hat.clone(), x_hat.clone()), last);
    let d_x = B::float_mul(
        B::float_sub(B::float_sub(d_x_hat, mean_d), B::float_mul(x_hat.clone(), mean_dx)),
        rstd,
    );

    let column_sum = |t: FloatTensor<B>| {
        let summed = B::float_sum_dim(B::float_reshape(t, Shape::from([rows, d])), 0);
        B::float_reshape(summed, Shape::from([d]))
    };
    let d_gamma = column_sum(B::float_mul(grad.clone(), x_hat));
    let d_beta = column_sum(grad);
    [d_x, d_gamma, d_beta]
}
