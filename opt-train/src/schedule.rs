//! OPT's learning-rate schedule: linear warmup from 0, then linear decay to a fraction of the peak.

use serde::{Deserialize, Serialize};

/// Warmup over `warmup_steps` updates to `max_lr`, then linear decay reaching `final_ratio * max_lr`
/// at `total_steps` (the paper: 10% at 300B tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub max_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub final_ratio: f64,
}

impl LrSchedule {
    /// The paper's schedule for a token batch size: warmup over 375M tokens, decay over 300B tokens.
    pub fn paper(max_lr: f64, batch_tokens: u64) -> Self {
        Self {
            max_lr,
            warmup_steps: (375_000_000 / batch_tokens).max(1),
            total_steps: (300_000_000_000 / batch_tokens).max(1),
            final_ratio: 0.1,
        }
    }

    /// The CPU presets' schedule for a run of `steps` updates: warmup over 5%, decay over the run.
    pub fn over_run(max_lr: f64, steps: u64) -> Self {
        Self {
            max_lr,
            warmup_steps: (steps / 20).max(1),
            total_steps: steps.max(1),
            final_ratio: 0.1,
        }
    }

    /// One line naming the schedule, e.g. `warmup 30 steps to 1.0e-3, linear decay to 10% at step 600`.
    pub fn describe(&self) -> String {
        format!(
            "warmup {} steps to {:.1e}, linear decay to {:.0}% at step {}",
            self.warmup_steps,
            self.max_lr,
            100.0 * self.final_ratio,
            self.total_steps
        )
    }

    /// Learning rate of the `step`-th update (1-based, as torch's LambdaLR after `step` calls).
    pub fn lr(&self, step: u64) -> f64 {
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return self.max_lr * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
        self.max_lr * (1.0 - progress * (1.0 - self.final_ratio))
    }
}
