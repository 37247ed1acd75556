//! Checkpoints of a run: `checkpoints/step-N/` holds the model, the optimizer state and the
//! loop's place (`state.json`), written to a temp folder and renamed when complete, so that a
//! killed run leaves either the whole checkpoint or none; a resume takes the newest readable one.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use opt_data::Cursor;
use opt_model::{Opt, OptConfig};
use serde::{Deserialize, Serialize};

use crate::config::TrainError;
use crate::flat_adamw::FlatAdamW;
use crate::loss_scale::LossScaler;
use crate::optim::AdamWSettings;

/// The checkpoint layout this version writes and reads: 2 = the flat AdamW state
/// (`optim-flat.mpk`); 0 (no field) = before it, per-tensor state (`optim-decay.mpk`).
pub(crate) const CHECKPOINT_FORMAT: u32 = 2;

/// Where the loop is: saved in every checkpoint as `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LoopState {
    pub step: u64,
    pub tokens: u64,
    pub cursor: Cursor,
    /// The model config the checkpoint was made with (a resume must not contradict it).
    #[serde(default)]
    pub model: Option<OptConfig>,
    /// Data-parallel workers that made the checkpoint (0 in checkpoints from before it was recorded).
    #[serde(default)]
    pub world_size: usize,
    /// [`CHECKPOINT_FORMAT`] of the checkpoint (0 in checkpoints from before it was recorded).
    #[serde(default)]
    pub format: u32,
    /// The float16 loss scaler (`--precision f16`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaler>,
}

pub(crate) type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;
/// Refuse a resume from `dir` that cannot be read as what it is: a model config that differs
/// from the run's (loading it would put tensors of one shape into a model of another), or a
/// checkpoint of another format. An unreadable `state.json` passes: the resume falls back past it.
pub(crate) fn check_resumable(dir: &Path, model: &OptConfig) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
        return Ok(());
    };
    let Ok(state) = serde_json::from_str::<LoopState>(&text) else {
        return Ok(());
    };
    check_model_config(dir, &state, model)?;
    check_format(dir, &state)
}

fn check_model_config(dir: &Path, state: &LoopState, model: &OptConfig) -> Result<(), TrainError> {
    let Some(saved) = &state.model else {
        return Ok(());
    };
    let as_map = |c: &OptConfig| {
        let mut c = c.clone();
        c.extra.clear();
        serde_json::to_value(c).expect("config serialises")
    };
    let (saved, given) = (as_map(saved), as_map(model));
    if let Some((key, was)) = saved
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, v)| given.get(k.as_str()) != Some(v))
    {
        return Err(TrainError::Config(format!(
            "the run's config contradicts checkpoint {}: model.{key} is {} there but {} now",
            dir.display(),
            was,
            given.get(key.as_str()).cloned().unwrap_or_default()
        )));
    }
    Ok(())
}

/// A checkpoint of another format, by name (its optimizer state cannot be read).
fn check_format(dir: &Path, state: &LoopState) -> Result<(), TrainError> {
    if state.format == CHECKPOINT_FORMAT {
        return Ok(());
    }
    Err(TrainError::Config(format!(
        "checkpoint {} is in format {} (per-tensor AdamW state, from before the flat optimizer); \
         this `opt` reads format {CHECKPOINT_FORMAT}: resume it with the `opt` that wrote it, or \
         start the run again",
        dir.display(),
        state.format
    )))
}

/// Write `checkpoints/step-N/` atomically (a temp folder renamed when complete); keep the last `keep`.
pub(crate) fn save_checkpoint<B: AutodiffBackend>(
    out: &Path,
    model: &Opt<B>,
    optim: &FlatAdamW<B>,
    state: &LoopState,
    keep: usize,
) -> Result<(), TrainError> {
    let root = out.join("checkpoints");
    let dir = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!(".step-{}.tmp", state.step));
    let io = |path: &Path, e: &dyn std::fmt::Display| TrainError::Io {
        path: path.into(),
        message: e.to_string(),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, &e))?;
    model
        .clone()
        .save_file(tmp.join("model"), &Rec::new())
        .map_err(|e| io(&tmp, &e))?;
    optim.save(&tmp).map_err(|e| io(&tmp, &e))?;
    let state_json = serde_json::to_string_pretty(state).expect("state serialises");
    opt_model::fsutil::write_atomic(&tmp.join("state.json"), state_json.as_bytes())
        .map_err(|e| io(&tmp, &e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, &e))?;
    let mut steps = checkpoint_steps(&root);
    steps.sort_unstable();
    while steps.len() > keep.max(1) {
        let old = steps.remove(0);
        let _ = std::fs::remove_dir_all(root.join(format!("step-{old}")));
    }
    Ok(())
}

fn checkpoint_steps(root: &Path) -> Vec<u64> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Complete checkpoint folders, newest first.
pub(crate) fn checkpoint_dirs(out: &Path) -> Vec<PathBuf> {
    let root = out.join("checkpoints");
    let mut steps = checkpoint_steps(&root);
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps
        .into_iter()
        .map(|s| root.join(format!("step-{s}")))
        .collect()
}

/// A checkpoint as read back: the weights, the optimizer state and the loop's place.
pub(crate) struct Loaded<B: AutodiffBackend> {
    pub model: Opt<B>,
    pub optim: FlatAdamW<B>,
    pub state: LoopState,
}

/// Read checkpoint `dir` into `model`'s shape, with an AdamW state made with `adamw` (the error
/// names what could not be read).
pub(crate) fn load_checkpoint<B: AutodiffBackend>(
    dir: &Path,
    model: Opt<B>,
    adamw: &AdamWSettings,
    device: &B::Device,
) -> Result<Loaded<B>, String> {
    let model = model
        .load_file(dir.join("model"), &Rec::new(), device)
        .map_err(|e| e.to_string())?;
    let optim = FlatAdamW::new(adamw, &model, device).load(dir, device)?;
    let text = std::fs::read_to_string(dir.join("state.json")).map_err(|e| e.to_string())?;
    let state: LoopState = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok(Loaded {
        model,
        optim,
        state,
    })
}
