#![doc = include_str!("../README.md")]

pub mod perplexity;
pub mod tasks;
pub mod validation;

pub use perplexity::{perplexity, score_rows, EvalError, EvalReport};
pub use tasks::{evaluate_task, TaskEvalError, TaskOptions, TaskReport};
pub use validation::{validation_loss, validation_loss_part};
