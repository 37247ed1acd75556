//! The `opt` command: parses arguments, then calls the libraries.

mod commands;
mod train_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// OPT language models on Burn: train, generate, evaluate, inspect.
#[derive(Parser)]
#[command(name = "opt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the model presets (paper sizes and CPU sizes) with parameter counts.
    Presets,
    /// Load an HF-layout checkpoint directory and summarise it (checks every tensor).
    Inspect(commands::InspectArgs),
    /// Pre-train an OPT model with the paper's recipe (default: `tiny` on Shakespeare).
    Train(train_cmd::TrainArgs),
    /// Generate text from a checkpoint.
    Generate(commands::GenerateArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Presets => commands::presets(),
        Command::Inspect(args) => commands::inspect(args),
        Command::Generate(args) => commands::generate(args),
        Command::Train(args) => train_cmd::run(args),
    }
}
