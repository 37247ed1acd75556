//! opt-data's integration tests: one crate (one link), a module per concern; `cargo test prepare`
//! selects the data-preparation tests.

mod prepare;
mod tasks_data;
mod tokenizer_export;
