//! AdamW over the flat layout ([`crate::bucket`]): the moments are two float32 vectors as long as
//! the model, and one update is 40 backend ops (19 over whole buffers) whatever the number of
//! parameter tensors (Burn's AdamW and the global clip run ~19 ops per tensor: 3,724 launches for
//! the 125m model's 196 tensors). The global-norm clip, the loss-scale unscaling and the non-finite skip are folded in
//! and stay on the device: a skipped update is the same ops with factors that leave the
//! parameters and moments as they were. The host reads the loss, the norm and the clip
//! coefficient once, after the update, for the log.
//!
//! The arithmetic is Burn's AdamW's (`burn::optim::AdamW`, metaseq's): decoupled decay
//! `p * (1 - lr * wd)`, moments `m * b1 + g * (1 - b1)`, `v * b2 + g² * (1 - b2)`, and the step
//! `lr * m̂ / (√v̂ + eps)` with float32 bias corrections, reassociated so that the buffers update in
//! place (the clip folded into the moments' weights, 1 / (1 - b1^t) into the step size). tests/it/flat_adamw.rs holds it equal to
//! [`crate::optim::PerTensorAdamW`] within 1e-6. One difference by construction: a parameter
//! without a gradient counts as a zero gradient (its moments decay; Burn's would skip it); every
//! OPT parameter has a gradient at every update.

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Record, Recorder};
use burn::tensor::backend::AutodiffBackend;

use crate::bucket;
use crate::optim::{AdamWSettings, DecayRule};

type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// AdamW with its state as flat float32 buffers over a model's parameters.
pub struct FlatAdamW<B: AutodiffBackend> {
    settings: AdamWSettings,
    moment_1: Tensor<Inner<B>, 1>,
    moment_2: Tensor<Inner<B>, 1>,
    /// Where weight decay does not apply ([`DecayRule::Matrices`]), over the flat layout.
    no_decay: Option<Tensor<Inner<B>, 1, Bool>>,
    /// Updates applied (skipped ones are not counted): the bias corrections' time.
    time: u64,
}

/// How the summed gradients become the update's: times `grad_scale` (1 / the loss scale), then
/// clipped to a global L2 norm of `max_norm` (`<= 0` disables) as `torch.nn.utils.clip_grad_norm_`.
#[derive(Debug, Clone, Copy)]
pub struct Clip {
    pub max_norm: f64,
    pub grad_scale: f64,
}

/// What an update did, read from the device once, after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateReport {
    pub loss: f64,
    /// Global L2 norm of the unscaled gradients, before clipping.
    pub grad_norm: f64,
    /// min(1, max_norm / (norm + 1e-6)); 1 without clipping.
    pub clip_coef: f64,
    /// True when the loss or a gradient was not finite: nothing changed.
    pub skipped: bool,
}

/// The optimizer's checkpoint: both moments and the time.
#[derive(Record)]
pub struct FlatAdamWRecord<B: Backend> {
    moment_1: Tensor<B, 1>,
    moment_2: Tensor<B, 1>,
    time: u64,
}

type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// The file under a checkpoint folder that holds the optimizer state.
pub const STATE_FILE: &str = "optim-flat";

impl<B: AutodiffBackend> FlatAdamW<B> {
    /// A fresh optimizer (zero moments) for `module`'s parameters.
    pub fn new<M: AutodiffModule<B>>(
        settings: &AdamWSettings,
        module: &M,
        device: &B::Device,
    ) -> Self {
        let n = bucket::len::<B, M>(module);
        let no_decay = match settings.decay {
            DecayRule::All => None,
            DecayRule::Matrices => Some(bucket::mask::<B, M>(module, device, |dims| dims < 2)),
        };
        Self {
            settings: settings.clone(),
            moment_1: Tensor::zeros([n], device),
            moment_2: Tensor::zeros([n], device),
            no_decay,
            time: 0,
        }
    }

    /// One update of `module` with learning rate `lr` from `flat`: its gradients (the sum of the
    /// update's micro-batch gradients, times the loss scale) followed by the loss, as
    /// [`crate::bucket::flatten_grads`] lays them out.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        flat: Tensor<Inner<B>, 1>,
        clip: Clip,
    ) -> (M, UpdateReport) {
        let s = &self.settings;
        let device = flat.device();
        let n = flat.dims()[0] - 1;
        // The loss in a tensor of its own, so that the gradients own their buffer: on a CPU
        // backend the ops below then run in place.
        let loss = flat.clone().slice(n..n + 1).add_scalar(0.0);
        let grads = flat.slice(0..n);

        // The global norm, the clip coefficient and the skip decision, as [1] tensors.
        let squares = grads.clone().square();
        let norm = squares.clone().sum().sqrt().mul_scalar(clip.grad_scale);
        let coef = match clip.max_norm > 0.0 {
            true => (norm.clone().add_scalar(1e-6).recip() * clip.max_norm).clamp_max(1.0),
            false => Tensor::ones([1], &device),
        };
        let finite = norm.clone().is_finite().bool_and(loss.clone().is_finite());
        let skip = finite.bool_not();

        // The update's factors, each replaced by the value that leaves everything as it was
        // when the update is skipped (one op for all of them): the moments' decays, the
        // gradient's and its square's weights (times the clip and the unscaling, as a [1]
        // tensor), the weight decay, and lr / (1 - b1^t).
        let (b1, b2) = (s.beta1, s.beta2);
        let t = (self.time + 1) as i32;
        let decay_rate = lr * s.weight_decay as f64;
        let step_size = lr / (1.0 - b1.powi(t)) as f64;
        let taken = [
            b1,
            1.0 - b1,
            b2,
            1.0 - b2,
            (1.0 - decay_rate) as f32,
            step_size as f32,
        ];
        let kept = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        let row = |v: [f32; 6]| {
            Tensor::<Inner<B>, 1>::from_data(TensorData::new(v.to_vec(), [6]), &device)
        };
        let factors = row(taken).mask_where(skip.clone().expand([6]), row(kept));
        let f = |i: usize| factors.clone().slice(i..i + 1);
        let g_factor = coef
            .clone()
            .mul_scalar(clip.grad_scale)
            .mask_fill(skip.clone(), 0.0);
        // Non-finite values would survive a zero factor (NaN · 0): a skip clears both buffers.
        let [grads, squares] = [grads, squares].map(|t| t.mask_fill(skip.clone().expand([n]), 0.0));

        // Taken out of `self` (and put back below), so that they are updated in place.
        let empty = || Tensor::<Inner<B>, 1>::zeros([0], &device);
        let m = std::mem::replace(&mut self.moment_1, empty());
        let v = std::mem::replace(&mut self.moment_2, empty());
        let v = v * f(2) + squares * (g_factor.clone().square() * f(3));
        let m = m * f(0) + grads * (g_factor * f(1));
        // lr · m̂ / (√v̂ + eps), with 1 / (1 - b1^t) folded into the step size.
        let denom = v
            .clone()
            .div_scalar(1f32 - b2.powi(t))
            .sqrt()
            .add_scalar(s.eps);
        let delta = denom.recip() * m.clone();

        let p = bucket::flatten_params::<B, M>(&module, &device);
        let decayed = match (decay_rate == 0.0, &self.no_decay) {
            (true, _) => p,
            (false, None) => p * f(4),
            (false, Some(mask)) => {
                let d = p.clone() * f(4);
                d.mask_where(mask.clone(), p)
            }
        };
        let p = decayed - delta * f(5);
        (self.moment_1, self.moment_2) = (m, v);
        let module = bucket::unflatten_params::<B, M>(module, p);

        // The one read of the update.
        let read = Tensor::cat(vec![loss, norm, coef], 0).into_data();
        let read = read.convert::<f64>().to_vec::<f64>().expect("f64 values");
        let report = UpdateReport {
            loss: read[0],
            grad_norm: read[1],
            clip_coef: read[2],
            skipped: !(read[0].is_finite() && read[1].is_finite()),
        };
        if !report.skipped {
            self.time += 1;
        }
        (module, report)
    }

    /// Updates applied so far.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Save the state as `dir/optim-flat.mpk`.
    pub fn save(&self, dir: &std::path::Path) -> Result<(), burn::record::RecorderError> {
        let record = FlatAdamWRecord::<Inner<B>> {
            moment_1: self.moment_1.clone(),
            moment_2: self.moment_2.clone(),
            time: self.time,
        };
        Rec::new().record(record, dir.join(STATE_FILE))
    }

    /// Restore the state written by [`Self::save`] (the error names a layout of another size).
    pub fn load(mut self, dir: &std::path::Path, device: &B::Device) -> Result<Self, String> {
        let record: FlatAdamWRecord<Inner<B>> = Rec::new()
            .load(dir.join(STATE_FILE), device)
            .map_err(|e| e.to_string())?;
        let (want, got) = (self.moment_1.dims()[0], record.moment_1.dims()[0]);
        if want != got || record.moment_2.dims()[0] != want {
            return Err(format!(
                "{}: the optimizer state covers {got} parameters, the model has {want}",
                dir.join(STATE_FILE).display()
            ));
        }
        (self.moment_1, self.moment_2, self.time) = (record.moment_1, record.moment_2, record.time);
        Ok(self)
    }
}
