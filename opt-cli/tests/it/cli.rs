//! The `opt` binary end to end: data prepare -> train -> eval, `opt eval` against the library, and
//! the bad input a user meets first (unknown preset, occupied --out, resume contradictions, a
//! tokenizer larger than the model).

mod parallel;
mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::backend::AutodiffBackend;
use opt::backend::{BackendKind, BackendTask};
use opt::data::{text_tokens, CorpusOptions, OptTokenizer};
use opt::model::checkpoint;

fn backend() -> String {
    std::env::var("OPT_BACKEND").unwrap_or_else(|_| "flex".into())
}

/// The backend for tests of command-line behaviour that does not depend on the kernels: wgpu on
/// lavapipe runs each fresh `opt` process's shaders and autotuning on the CPU (minutes per test),
/// and its numerics are covered by the library parity tests, so those use flex instead.
fn cli_backend() -> String {
    match backend().as_str() {
        "wgpu" => "flex".into(),
        other => other.into(),
    }
}

fn opt(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_opt"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run opt");
    eprintln!(
        "$ opt {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(args: &[&str]) -> String {
    let out = opt(args);
    assert!(out.status.success(), "opt {} failed", args.join(" "));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `opt`, expects failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = opt(args);
    assert!(
        !out.status.success(),
        "opt {} should have failed",
        args.join(" ")
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains("panicked"),
        "a panic is not an error message: {err}"
    );
    err
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Generated English-like text: a few hundred varied sentences in blank-line-separated blocks.
fn write_text(path: &Path) {
    let words = [
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat", "runs",
    ];
    let mut s = String::new();
    let mut x = 7u64;
    for i in 0..400 {
        for _ in 0..12 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push_str(words[(x >> 33) as usize % words.len()]);
            s.push(' ');
        }
        s.push_str(if i % 5 == 4 { ".\n\n" } else { ".\n" });
    }
    std::fs::write(path, s).unwrap();
}

fn forward_fixture() -> PathBuf {
    let root = std::env::var_os("OPT_HF_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/hf-opt")
        });
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.join("config.json").is_file() && d.join("model.safetensors").is_file())
        .collect();
    dirs.sort();
    dirs.into_iter().next().expect("a fixture model")
}

struct LibraryEval {
    model: PathBuf,
    data: PathBuf,
    seq_len: usize,
    stride: Option<usize>,
}

impl BackendTask for LibraryEval {
    type Output = (u64, f64);
    fn run<B: AutodiffBackend>(self, device: B::Device) -> (u64, f64) {
        let model = checkpoint::load_pretrained::<B::InnerBackend>(&self.model, &device).unwrap();
        let tok = OptTokenizer::from_dir(&self.model).unwrap();
        let (tokens, _) = text_tokens(&self.data, &tok, &CorpusOptions::default()).unwrap();
        let r =
            opt::eval::perplexity(&model, &tokens, self.seq_len, self.stride, 1, &device).unwrap();
        (r.tokens, r.mean_loss)
    }
}

#[test]
fn eval_cli_equals_the_library_on_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.txt");
    write_text(&text);
    // A fixture model (random weights, vocab >= 300) with a tokenizer trained here.
    let fixture = forward_fixture();
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    ok(&[
        "tokenizer",
        "train",
        "--input",
        p(&text),
        "--vocab-size",
        "300",
        "--out",
        p(&model),
    ]);
    assert!(OptTokenizer::from_dir(&model).unwrap().vocab_size() <= 300);
    let b = backend();
    for (seq, stride) in [(32usize, None), (24, Some(8usize))] {
        let seq_s = seq.to_string();
        let mut args = vec![
            "eval",
            "--model",
            p(&model),
            "--data",
            p(&text),
            "--seq-len",
            &seq_s,
            "--json",
            "--backend",
            &b,
        ];
        let stride_s = stride.map(|s| s.to_string());
        if let Some(s) = &stride_s {
            args.extend(["--stride", s]);
        }
        let v: serde_json::Value = serde_json::from_str(ok(&args).trim()).unwrap();
        let kind = BackendKind::from_env().unwrap();
        let (tokens, loss) = opt::backend::run(
            kind,
            LibraryEval {
                model: model.clone(),
                data: text.clone(),
                seq_len: seq,
                stride,
            },
        )
        .unwrap();
        assert_eq!(v["tokens"].as_u64().unwrap(), tokens);
        let cli = v["mean_loss"].as_f64().unwrap();
        assert!(
            (cli - loss).abs() <= 1e-6 * loss.abs(),
            "cli {cli} vs library {loss}"
        );
        assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-6 * loss.exp());
    }
    // Bad requests: a model folder without tokenizer files; a window longer than the context.
    let bare = tmp.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), bare.join(f)).unwrap();
    }
    let e = fails(&[
        "eval",
        "--model",
        p(&bare),
        "--data",
        p(&text),
        "--backend",
        &b,
    ]);
    assert!(
        e.contains("no tokenizer files") && e.contains("--tokenizer"),
        "{e}"
    );
    let e = fails(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        p(&text),
        "--seq-len",
        "100000",
        "--backend",
        &b,
    ]);
    assert!(e.contains("max_position_embeddings"), "{e}");
}

#[test]
fn prepare_train_eval_and_the_errors_around_them() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("corpus.txt");
    write_text(&text);
    let data = tmp.path().join("prepared");
    let b = cli_backend();
    let e = fails(&[
        "data",
        "prepare",
        "--input",
        p(&text),
        "--out",
        p(&data),
        "--weights",
        "1,2",
    ]);
    assert!(e.contains("--weights has 2 values for 1 --input"), "{e}");
    ok(&[
        "data",
        "prepare",
        "--input",
        p(&text),
        "--split",
        "blank-line",
        "--vocab-size",
        "400",
        "--out",
        p(&data),
        "--valid-fraction",
        "0.2",
    ]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["sources"][0]["documents"], 80);

    // Unknown preset: named, with the choices.
    let e = fails(&[
        "train",
        "--preset",
        "nope",
        "--data",
        p(&data),
        "--out",
        p(&tmp.path().join("x")),
    ]);
    assert!(
        e.contains("unknown preset `nope`") && e.contains("tiny"),
        "{e}"
    );

    // A short run on the prepared folder, then eval of its export on the same shards.
    let run = tmp.path().join("run");
    let base = [
        "train",
        "--data",
        p(&data),
        "--max-steps",
        "2",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "0",
        "--micro-batch",
        "2",
        "--batch-tokens",
        "256",
        "--backend",
        &b,
        "--sample-prompt",
        "the",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    ok(&with(&base, &["--out", p(&run)]));
    assert!(run.join("model/config.json").is_file() && run.join("model/tokenizer.json").is_file());
    check_curves(&run, tmp.path());
    let v: serde_json::Value = serde_json::from_str(
        ok(&[
            "eval",
            "--model",
            p(&run.join("model")),
            "--data",
            p(&data),
            "--seq-len",
            "64",
            "--json",
            "--backend",
            &b,
        ])
        .trim(),
    )
    .unwrap();
    assert!(v["mean_loss"].as_f64().unwrap() > 0.0 && v["tokens"].as_u64().unwrap() > 0);

    // The same --out again: refused, pointing at --resume; a non-empty folder that is no run too.
    let e = fails(&with(&base, &["--out", p(&run)]));
    assert!(
        e.contains("already holds a run") && e.contains("--resume"),
        "{e}"
    );
    let e = fails(&with(&base, &["--out", p(&data)]));
    assert!(e.contains("not empty and holds no run"), "{e}");

    // Resume: flags that contradict the checkpoints are refused...
    let e = fails(&["train", "--resume", p(&run), "--preset", "cpu-small"]);
    assert!(e.contains("contradicts"), "{e}");
    let e = fails(&["train", "--resume", p(&run), "--lr", "0.1"]);
    assert!(e.contains("--lr cannot change when resuming"), "{e}");
    // ...and so is a config.toml edited to contradict them (not a silent fallback).
    let cfg_path = run.join("config.toml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let edited = cfg.replacen("ffn_dim = 512", "ffn_dim = 256", 1);
    assert_ne!(edited, cfg, "tiny's ffn_dim is 512");
    std::fs::write(&cfg_path, edited).unwrap();
    let resume = [
        "train",
        "--resume",
        p(&run),
        "--max-steps",
        "3",
        "--backend",
        &b,
    ];
    let e = fails(&resume);
    assert!(
        e.contains("contradicts checkpoint") && e.contains("ffn_dim"),
        "{e}"
    );
    std::fs::write(&cfg_path, &cfg).unwrap();
    // A legitimate resume raises --max-steps and continues from step 2.
    let out = ok(&with(&resume, &["--sample-prompt", "the"]));
    assert!(!out.is_empty());
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 3);

    // A tokenizer larger than an explicit config's vocabulary is an error naming both sizes.
    let e = fails(&[
        "train",
        "--config",
        p(&cfg_path),
        "--tokenizer",
        "gpt2",
        "--data",
        p(&text),
        "--out",
        p(&tmp.path().join("big")),
        "--backend",
        &b,
    ]);
    assert!(e.contains("50261 ids") && e.contains("2048"), "{e}");
}

/// `write_text`'s corpus prepared with a 400-id tokenizer, in `tmp/prepared`.
fn prepared(tmp: &Path) -> PathBuf {
    let text = tmp.join("corpus.txt");
    write_text(&text);
    let data = tmp.join("prepared");
    ok(&[
        "data",
        "prepare",
        "--input",
        p(&text),
        "--vocab-size",
        "400",
        "--out",
        p(&data),
    ]);
    data
}

/// (step, loss) of every line of a run's metrics.jsonl.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn sigterm_stops_with_a_checkpoint_and_resume_repeats_the_straight_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let b = cli_backend();
    let steps = "150";
    let train_args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--data",
            p(&data),
            "--max-steps",
            steps,
            "--checkpoint-every",
            "1000",
            "--eval-every",
            "0",
            "--micro-batch",
            "2",
            "--batch-tokens",
            "256",
            "--backend",
            &b,
            "--sample-prompt",
            "the",
            "--log-every",
            "25",
            "--out",
            p(out),
        ]
        .map(String::from)
        .to_vec()
    };

    // Uninterrupted; stderr is no terminal here, so progress comes as lines every 25 updates.
    let straight = tmp.path().join("straight");
    let args = train_args(&straight);
    let out = opt(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    for step in ["step 25/150 loss", "step 50/150 loss", "step 150/150 loss"] {
        assert!(
            log.contains(step),
            "no `{step}` line off a terminal:\n{log}"
        );
    }
    assert!(log.contains(" eta ") && log.contains(" tok/s"), "{log}");

    // The same run, sent SIGTERM once a few updates are done: it stops after the current update
    // with a checkpoint at that step, says how to resume, and exits 0.
    let stopped = tmp.path().join("stopped");
    let stderr_path = tmp.path().join("stopped.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_opt"))
        .args(train_args(&stopped))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while losses(&stopped).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never got going"
        );
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    eprintln!("{log}");
    assert!(status.success(), "a graceful stop exits 0, got {status}");
    let at = losses(&stopped).last().unwrap().0;
    assert!(
        at < 150,
        "the signal came too late to test anything (step {at})"
    );
    assert!(
        log.contains(&format!("stopped by a signal after step {at}"))
            && log.contains(&format!("--resume {}", p(&stopped))),
        "{log}"
    );
    assert!(stopped
        .join(format!("checkpoints/step-{at}/state.json"))
        .is_file());
    assert!(
        !stopped.join("model").exists(),
        "a stopped run exports nothing"
    );

    // Resumed, it logs exactly the losses of the uninterrupted run.
    ok(&[
        "train",
        "--resume",
        p(&stopped),
        "--backend",
        &b,
        "--sample-prompt",
        "the",
    ]);
    let (a, z) = (losses(&straight), losses(&stopped));
    assert_eq!(a.len(), 150);
    assert_eq!(
        z.iter().map(|l| l.0).collect::<Vec<_>>(),
        (1..=150).collect::<Vec<_>>()
    );
    for ((step, x), (_, y)) in a.iter().zip(&z) {
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "step {step}: loss {x} straight, {y} resumed"
        );
    }
}

#[test]
fn raising_max_steps_on_resume_names_the_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("corpus.txt");
    write_text(&text);
    let run = tmp.path().join("run");
    let b = cli_backend();
    let first = [
        "train",
        "--data",
        p(&text),
        "--max-steps",
        "20",
        "--checkpoint-every",
        "10",
        "--eval-every",
        "0",
        "--micro-batch",
        "2",
        "--batch-tokens",
        "256",
        "--backend",
        &b,
        "--sample-prompt",
        "the",
        "--out",
        p(&run),
    ];
    ok(&first);
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--resume",
            p(&run),
            "--backend",
            &b,
            "--sample-prompt",
            "the",
        ];
        args.extend_from_slice(extra);
        let out = opt(&args);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let lr_at = |step: u64| {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        text.lines()
            .rev()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["step"] == step)
            .map(|v| v["lr"].as_f64().unwrap())
            .unwrap()
    };
    // tiny: 1 warmup step (5% of 20), decay to 10% at step 20. Past it: the floor, and it says so.
    let log = resume(&["--max-steps", "30"]);
    assert!(
        log.contains("schedule: warmup 1 steps to")
            && log.contains("linear decay to 10% at step 20")
            && log.contains("steps 21..=30 continue at the floor")
            && log.contains("--extend-schedule"),
        "{log}"
    );
    let peak = lr_at(1);
    assert!((lr_at(25) - 0.1 * peak).abs() < 1e-12 * peak);
    // --extend-schedule re-derives it for 40 steps: warmup 2, decay to step 40.
    let log = resume(&["--max-steps", "40", "--extend-schedule"]);
    assert!(
        log.contains("now warmup 2 steps to") && log.contains("at step 40 (from step 31 on)"),
        "{log}"
    );
    let expected = peak * (1.0 - (35.0 - 2.0) / 38.0 * 0.9);
    assert!(
        (lr_at(35) - expected).abs() < 1e-9 * peak,
        "{} vs {expected}",
        lr_at(35)
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("total_steps = 40"), "{config}");
}

/// The first zero-shot lm-eval fixture (in path order) of the colon-separated folders of
/// `$OPT_TASK_FIXTURES` whose folder has its task's raw rows (`data/<task>.jsonl`): the fixture
/// file and its JSON.
fn zero_shot_task_fixture() -> (PathBuf, serde_json::Value) {
    let roots: Vec<PathBuf> = match std::env::var("OPT_TASK_FIXTURES") {
        Ok(list) => list
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        Err(_) => ["tasks", "tasks-more"]
            .iter()
            .map(|d| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/fixtures")
                    .join(d)
            })
            .collect(),
    };
    let mut files: Vec<PathBuf> = roots
        .iter()
        .flat_map(|r| std::fs::read_dir(r).unwrap_or_else(|e| panic!("{}: {e}", r.display())))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .find_map(|f| {
            let fx: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&f).ok()?).ok()?;
            let data = format!("data/{}.jsonl", fx["task"].as_str()?);
            let usable = fx["kind"] == "lm_eval_multiple_choice"
                && fx["num_fewshot"] == 0
                && f.with_file_name(data).is_file();
            usable.then_some((f, fx))
        })
        .expect("a zero-shot task fixture with its data file")
}

/// `opt tasks convert` on raw rows, then `opt eval-tasks` on the task file: the logged
/// log-likelihoods are lm-eval's (a zero-shot fixture), the report is written; bad task input
/// fails with a message naming it.
#[test]
fn tasks_convert_and_eval_tasks_reproduce_lm_eval() {
    let (fixture, fx) = zero_shot_task_fixture();
    let task = fx["task"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (file, report, samples) = (
        dir.path().join(format!("{task}.jsonl")),
        dir.path().join("r.json"),
        dir.path().join("s.jsonl"),
    );
    let data = fixture.with_file_name(format!("data/{task}.jsonl"));
    ok(&[
        "tasks",
        "convert",
        "--task",
        task,
        "--input",
        p(&data),
        "--out",
        p(&file),
    ]);
    let model = fixture.with_file_name(fx["model"].as_str().unwrap());
    let out = ok(&[
        "eval-tasks",
        "--model",
        p(&model),
        "--tasks",
        p(&file),
        "--limit",
        "4",
        "--batch",
        "3",
        "--report",
        p(&report),
        "--log-samples",
        p(&samples),
        "--backend",
        &backend(),
    ]);
    assert!(out.contains("acc_norm") && out.contains(task), "{out}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let items = fx["items"].as_array().unwrap();
    let evaluated = items.len().min(4);
    assert_eq!(r["results"][0]["items"], evaluated);
    let logged: Vec<serde_json::Value> = std::fs::read_to_string(&samples)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(logged.len(), evaluated);
    // Each logged document is the fixture item with the same requests (the data file holds the
    // fixture's rows, in its own order).
    let strings = |doc: &serde_json::Value| -> Vec<(String, String)> {
        doc["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["context"].to_string(), r["continuation"].to_string()))
            .collect()
    };
    for doc in &logged {
        let want = items
            .iter()
            .find(|i| strings(i) == strings(doc))
            .unwrap_or_else(|| panic!("logged document {} is no fixture item", doc["doc_id"]));
        for (a, b) in doc["requests"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["requests"].as_array().unwrap())
        {
            let (a, b) = (
                a["loglikelihood"].as_f64().unwrap(),
                b["loglikelihood"].as_f64().unwrap(),
            );
            assert!((a - b).abs() <= 1e-4 + 1e-6 * b.abs(), "{a} vs lm-eval {b}");
        }
    }
    let e = fails(&[
        "eval-tasks",
        "--model",
        p(&model),
        "--tasks",
        "no_such_task",
        "--data-dir",
        p(dir.path()),
    ]);
    assert!(
        e.contains("unknown task `no_such_task`") && e.contains("arc_easy"),
        "{e}"
    );
    std::fs::write(
        &file,
        "{\"doc_id\": 0, \"query\": \"Q\", \"choices\": [\"a\"], \"gold\": 4}\n",
    )
    .unwrap();
    let e = fails(&["eval-tasks", "--model", p(&model), "--tasks", p(&file)]);
    assert!(
        e.contains(&format!("{task}.jsonl:1")) && e.contains("gold"),
        "{e}"
    );
}

/// `opt train` left a `curves.png`; `opt plot` draws PNG and SVG of named metrics and names what it
/// cannot draw.
fn check_curves(run: &Path, tmp: &Path) {
    let png = std::fs::read(run.join("curves.png")).expect("opt train writes curves.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    // One 1000 x 280 panel per default metric the run logged (loss, lr, grad_norm; no validation).
    assert_eq!((width, height), (1000, 3 * 280));
    let svg = tmp.join("c.svg");
    let out = ok(&[
        "plot",
        p(run),
        p(run),
        "--out",
        p(&svg),
        "--metric",
        "loss,tokens_per_second",
        "--x",
        "tokens",
    ]);
    assert!(out.contains("loss, tokens_per_second"), "{out}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("polyline") && text.contains("tokens_per_second")
    );
    let e = fails(&["plot", p(run), "--out", p(&svg), "--metric", "loss,nope"]);
    assert!(e.contains("`nope`") && e.contains("metrics.jsonl"), "{e}");
    let e = fails(&["plot", p(run), "--out", p(&tmp.join("c.jpg"))]);
    assert!(e.contains("c.jpg") && e.contains(".png or .svg"), "{e}");
    let e = fails(&["plot", p(&tmp.join("no-run"))]);
    assert!(e.contains("no-run/metrics.jsonl"), "{e}");
}
