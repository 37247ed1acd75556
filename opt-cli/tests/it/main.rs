//! opt-cli's integration tests: one crate (one link), a module per concern; `cargo test cli`
//! selects the `opt` binary's end-to-end tests.

mod cli;
