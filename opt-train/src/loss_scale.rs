//! Dynamic loss scaling for float16 training, as metaseq's `DynamicLossScaler` runs it for OPT:
//! the loss is multiplied by a scale before the backward so that small float16 gradients do not
//! flush to zero; an update whose gradients overflow is skipped and the scale halved; after
//! `window` clean updates in a row the scale doubles. A scale that would fall below `floor`
//! stops the run (metaseq raises `FloatingPointError("Minimum loss scale reached")`).

use serde::{Deserialize, Serialize};

/// The scaler's settings (the paper's: init 4, window 256; metaseq's floor option, here 2^-5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaleSettings {
    /// The first scale.
    pub init: f64,
    /// Clean updates in a row after which the scale doubles.
    pub window: u64,
    /// The smallest scale allowed; an overflow at this scale stops the run.
    pub floor: f64,
}

impl Default for LossScaleSettings {
    fn default() -> Self {
        Self {
            init: 4.0,
            window: 256,
            floor: 2f64.powi(-5),
        }
    }
}

/// The scaler's state, kept in checkpoints for an exact resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The scale of the next update.
    pub scale: f64,
    /// Clean updates since the last overflow or doubling.
    pub clean: u64,
}

/// An overflow at the floor: the run cannot go on in float16.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "float16 loss scale: the gradients overflow even at the floor scale {floor} (2^{}): the \
     loss is probably exploding; lower the learning rate, or train with --precision bf16",
    floor.log2()
)]
pub struct ScaleFloorReached {
    pub floor: f64,
}

impl LossScaler {
    /// A scaler at `settings.init`.
    pub fn new(settings: &LossScaleSettings) -> Self {
        Self {
            scale: settings.init,
            clean: 0,
        }
    }

    /// Account for one update: halve on `overflow`, double after `window` clean updates.
    pub fn update(
        &mut self,
        overflow: bool,
        settings: &LossScaleSettings,
    ) -> Result<(), ScaleFloorReached> {
        if overflow {
            let halved = self.scale / 2.0;
            if halved < settings.floor {
                return Err(ScaleFloorReached {
                    floor: settings.floor,
                });
            }
            (self.scale, self.clean) = (halved, 0);
        } else {
            self.clean += 1;
            if self.clean >= settings.window {
                (self.scale, self.clean) = (self.scale * 2.0, 0);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// metaseq's rule by hand: 4 → overflow 2 → three clean (window 3) 4 → overflows down to
    /// the floor 0.25, where one more overflow is the error.
    #[test]
    fn halves_on_overflow_doubles_after_a_clean_window_and_stops_at_the_floor() {
        let settings = LossScaleSettings {
            init: 4.0,
            window: 3,
            floor: 0.25,
        };
        let mut s = LossScaler::new(&settings);
        s.update(true, &settings).unwrap();
        assert_eq!(s.scale, 2.0);
        for (i, want) in [2.0, 2.0, 4.0, 4.0].into_iter().enumerate() {
            s.update(false, &settings).unwrap();
            assert_eq!(s.scale, want, "after clean update {}", i + 1);
        }
        for want in [2.0, 1.0, 0.5, 0.25] {
            s.update(true, &settings).unwrap();
            assert_eq!(s.scale, want);
        }
        let e = s.update(true, &settings).unwrap_err();
        assert_eq!(s.scale, 0.25, "the scale stays at the floor");
        assert!(e.to_string().contains("floor scale 0.25 (2^-2)"), "{e}");
    }
}
