//! The `opt` command: parses arguments, then calls the libraries.

mod bench;
mod bench_optim;
mod bench_serve;
mod commands;
mod convert_cmd;
mod data_cmd;
mod measure;
mod plot_cmd;
mod progress;
mod serve_cmd;
mod stop;
mod tasks_cmd;
mod train_cmd;
mod weights_arg;

use anyhow::Result;

/// Tensor buffers are large and short-lived: glibc's malloc unmaps them and the kernel zeroes fresh
/// pages on every op (8-12% of a CPU training step in `perf`). mimalloc, told never to purge freed
/// memory (like PyTorch's caching allocator), reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h: 15 in v2 and v3 (the sys crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
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
    Train(Box<train_cmd::TrainArgs>),
    /// Serve as the coordinator of a multi-node `opt train --nodes N` run.
    Coordinator(train_cmd::CoordinatorArgs),
    /// Generate text from a checkpoint.
    Generate(commands::GenerateArgs),
    /// Serve a checkpoint over HTTP: OpenAI-compatible completions with continuous batching.
    Serve(serve_cmd::ServeArgs),
    /// Perplexity of a checkpoint on a text file or prepared token shards.
    Eval(commands::EvalArgs),
    /// Import a metaseq checkpoint (.pt parts) into an HF-layout directory.
    Convert(convert_cmd::ConvertArgs),
    /// Train a tokenizer.
    #[command(subcommand)]
    Tokenizer(data_cmd::TokenizerCommand),
    /// Prepare corpora into token shards.
    #[command(subcommand)]
    Data(data_cmd::DataCommand),
    /// Training curves of one or several runs (PNG or SVG).
    Plot(plot_cmd::PlotArgs),
    /// Zero/few-shot benchmark data: list, fetch, convert.
    #[command(subcommand)]
    Tasks(tasks_cmd::TasksCommand),
    /// Zero/few-shot accuracy on benchmark tasks, scored as lm-evaluation-harness scores them.
    EvalTasks(tasks_cmd::EvalTasksArgs),
    /// Measure training, generation or data-preparation throughput.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Library log lines at WARN and above on stderr, or what `RUST_LOG` asks for.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> Result<()> {
    // SAFETY: sets a process-wide allocator option; no memory is handed out differently because of it.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    init_logging();
    let command = Cli::parse().command;
    on_rayon_pool(move || run(command))
}

/// Runs `f` on a thread of rayon's global pool, which is sized to the machine's cores. The CPU
/// backends split large ops (matmuls, elementwise maps) over that pool; a command on the main
/// thread would be one thread more than there are cores, and the pool's idle workers, spinning
/// while it issues ops, would take turns with it on the cores (about 200,000 involuntary context
/// switches in 40 training steps of cpu-small). On a pool thread the command issues the ops and
/// works on their parallel parts itself.
///
/// The pool keeps at least two threads: a data-parallel worker on the pool thread blocks in its
/// all-reduce while the other workers still need a free pool thread for their ops.
fn on_rayon_pool<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // The main thread's stack size, for the command's deep call chains (autodiff, the loader).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(2))
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(|_| f())
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Presets => commands::presets(),
        Command::Inspect(args) => commands::inspect(args),
        Command::Generate(args) => commands::generate(args),
        Command::Train(args) => train_cmd::run(*args),
        Command::Coordinator(args) => train_cmd::coordinator(args),
        Command::Eval(args) => commands::eval(args),
        Command::Serve(args) => serve_cmd::serve(args),
        Command::Convert(args) => convert_cmd::run(args),
        Command::Plot(args) => plot_cmd::plot(args),
        Command::Tasks(command) => tasks_cmd::tasks(command),
        Command::EvalTasks(args) => tasks_cmd::eval_tasks(args),
        Command::Bench(command) => bench::run(command),
        Command::Tokenizer(command) => data_cmd::tokenizer(command),
        Command::Data(command) => data_cmd::data(command),
    }
}
