//! The `opt` command: parses arguments, then calls the libraries.

mod commands;

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
    /// Generate text from a checkpoint.
    Generate(commands::GenerateArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Presets => commands::presets(),
        Command::Inspect(args) => commands::inspect(args),
        Command::Generate(args) => commands::generate(args),
    }
}
