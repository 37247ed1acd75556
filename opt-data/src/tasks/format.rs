//! Our task format: one JSON object per line, one line per evaluated document.
//!
//! ```json
//! {"doc_id": 0, "query": "Question: ...\nAnswer:", "choices": ["a", "b"], "gold": 1, "source_hash": "..."}
//! {"doc_id": 7, "choices": ["The trophy", "The suitcase"], "continuation": "is too big.", "gold": 0, "source_hash": "..."}
//! ```
//! - `query`: the zero-shot context shared by every choice; each request is
//!   `(fewshot + query, " " + choice)`.
//! - partial scoring (WinoGrande): no `query`; `choices` are the per-choice contexts and
//!   `continuation` the text they share; each request is `(fewshot + choice, " " + continuation)`.
//! - LAMBADA-style (greedy / perplexity): one choice, the target, with `gold` 0.
//! - `source_hash`: identifies the source record, so that a few-shot draw of the evaluated
//!   document itself (or an identical one) is dropped as lm-eval drops it.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TaskError;

/// One evaluated document of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskItem {
    /// Row of the source split.
    pub doc_id: usize,
    /// The zero-shot context shared by every choice (absent with partial scoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The answers (lm-eval's `doc_to_choice`); with partial scoring, the per-choice contexts.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
    /// Partial scoring: the continuation every choice's context shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
    /// Hash of the source record (few-shot draws equal to the evaluated document are dropped).
    #[serde(default)]
    pub source_hash: String,
}

impl TaskItem {
    /// Whether each choice has its own context (WinoGrande) rather than its own continuation.
    pub fn is_partial(&self) -> bool {
        self.query.is_none()
    }

    /// Check the invariants a scorer relies on.
    pub fn validate(&self) -> Result<(), String> {
        if self.choices.is_empty() {
            return Err("`choices` is empty".into());
        }
        if self.gold >= self.choices.len() {
            return Err(format!(
                "`gold` {} is not an index of the {} choices",
                self.gold,
                self.choices.len()
            ));
        }
        match (&self.query, &self.continuation) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) => Err("give `query` or `continuation`, not both".into()),
            (None, None) => Err("missing `query` (or `continuation` for partial scoring)".into()),
        }
    }
}

/// Read a task file; a malformed line or an invalid item is an error naming the file and line.
pub fn read_items(path: &Path) -> Result<Vec<TaskItem>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|e| TaskError::File {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| TaskError::Line {
            path: path.into(),
            line: i + 1,
            message,
        };
        let item: TaskItem = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        item.validate().map_err(err)?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(TaskError::File {
            path: path.into(),
            message: "no items".into(),
        });
    }
    Ok(items)
}

/// Write items as a task file, atomically.
pub fn write_items(path: &Path, items: &[TaskItem]) -> Result<(), TaskError> {
    let mut out = Vec::new();
    for item in items {
        serde_json::to_writer(&mut out, item).expect("a TaskItem serializes");
        out.write_all(b"\n").expect("writing to a Vec");
    }
    crate::fsutil::write_atomic(path, &out).map_err(|e| TaskError::File {
        path: path.into(),
        message: e.to_string(),
    })
}
