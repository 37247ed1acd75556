//! Zero/few-shot task evaluation against lm-evaluation-harness itself: every fixture file in the
//! folders of `$OPT_TASK_FIXTURES` (colon-separated; made by lm-eval 0.4.13 on a random OPT
//! model) is replayed through the production path: converter, few-shot sampler, prompts, token
//! ids, truncation, scores, metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::Backend;
use burn::tensor::backend::AutodiffBackend;
use opt::data::tasks::{self, plan, Metrics, PlanOptions, PlannedItem, TaskItem, FEWSHOT_SEED};
use opt::data::OptTokenizer;
use opt::eval::tasks::{
    aggregate, evaluate_task, item_results, score_planned, ItemResult, Score, TaskOptions,
};
use opt::model::checkpoint;
use opt::BackendTask;
use serde_json::Value;

/// The fixture folders: `$OPT_TASK_FIXTURES` (colon-separated), default
/// `../shared/fixtures/tasks:../shared/fixtures/tasks-more`.
fn roots() -> Vec<PathBuf> {
    crate::common::fixture_roots(
        "OPT_TASK_FIXTURES",
        &["../shared/fixtures/tasks", "../shared/fixtures/tasks-more"],
    )
}

/// Every `*.json` directly in a fixture folder whose kind is lm-eval multiple choice; a folder
/// with none is a failure.
fn fixture_files() -> Vec<PathBuf> {
    let mut all = Vec::new();
    for root in roots() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot read {} (set OPT_TASK_FIXTURES): {e}",
                    root.display()
                )
            })
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter(|p| read_json(p)["kind"] == "lm_eval_multiple_choice")
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no task fixture under {}",
            root.display()
        );
        all.extend(files);
    }
    all
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap_or_else(|| panic!("not an index: {v}")) as usize
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| usize_of(x) as u32)
        .collect()
}

/// The largest differences seen in one fixture (quoted in the output).
#[derive(Default)]
struct Diffs {
    ll_abs: f64,
    ll_over_tol: f64,
}

struct TaskParity;

impl BackendTask for TaskParity {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for file in fixture_files() {
            check_fixture::<B::InnerBackend>(&file, &device);
        }
    }
}

#[test]
fn task_parity() {
    crate::common::on_backend(TaskParity);
}

fn check_fixture<B: Backend>(file: &Path, device: &B::Device) {
    let fx = read_json(file);
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let def = tasks::task(fx["task"].as_str().unwrap()).unwrap();
    let shots = usize_of(&fx["num_fewshot"]);
    let model_dir = file.with_file_name(fx["model"].as_str().unwrap());
    let model = checkpoint::load_pretrained::<B>(&model_dir, device).unwrap();
    let tokenizer = OptTokenizer::from_dir(&model_dir).unwrap();
    assert_eq!(
        tokenizer.adds_bos(),
        fx["lm_eval"]["bos_prepended"] == true,
        "{name}: BOS"
    );
    let max_length = usize_of(&fx["lm_eval"]["max_length"]);
    assert_eq!(model.config.max_position_embeddings, max_length, "{name}");
    let fixture_items = fx["items"].as_array().unwrap();

    let (items, pool) = convert_documents(def, fixture_items, &name);
    let options = PlanOptions {
        shots,
        seed: FEWSHOT_SEED,
        max_length,
    };
    let pool_len = usize_of(&fx["dataset"]["num_rows"]);
    let planned = plan(
        def.name,
        &items,
        pool_len,
        |i| pool.get(&i),
        &tokenizer,
        &options,
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    for (p, fi) in planned.iter().zip(fixture_items) {
        check_plan(p, fi, &name);
    }

    // Both scoring paths: every request whole, and shared contexts through the KV cache; then
    // every request in one batch, whose continuation tokens (1,536 in hellaswag's fixture) cross
    // the LM head's slices (`lm_head_chunk`: 333 rows for this vocabulary).
    let mut results = Vec::new();
    for (share_prefix, batch) in [(false, 4), (true, 4), (false, usize::MAX)] {
        let scores = score_planned(&model, &planned, batch, share_prefix, device);
        let diffs = check_scores(&scores, fixture_items, &fx["tolerances"], &name);
        results = item_results(&planned, &scores, def.metrics.acc_norm);
        check_metrics(&results, &scores, fixture_items, &fx, def.metrics, &name);
        println!(
            "{name} (shared prefix: {share_prefix}, batch {}): {} items, {} requests; max |ll diff| {:.2e} ({:.3} of the tolerance)",
            if batch == usize::MAX { "all".to_string() } else { batch.to_string() },
            items.len(),
            scores.iter().map(Vec::len).sum::<usize>(),
            diffs.ll_abs,
            diffs.ll_over_tol
        );
    }
    if shots == 0 && items.len() == pool_len.min(items.len()) {
        end_to_end(&model, &tokenizer, def, &items, &results, device, &name);
    }
}

/// Each evaluated document and few-shot document converted from its raw row, keyed by doc_id.
fn convert_documents(
    def: &tasks::TaskDef,
    fixture_items: &[Value],
    name: &str,
) -> (Vec<TaskItem>, HashMap<usize, TaskItem>) {
    let convert = |v: &Value| {
        let id = usize_of(&v["doc_id"]);
        def.convert_row(id, &v["doc"])
            .unwrap_or_else(|e| panic!("{name}: doc {id}: {e}"))
    };
    let mut pool = HashMap::new();
    let mut items = Vec::new();
    for fi in fixture_items {
        let item = convert(fi);
        // The converter reproduces lm-eval's doc_to_choice, gold and acc_norm lengths.
        assert_eq!(
            item.choices,
            strings(&fi["choices"]),
            "{name}: doc {}",
            item.doc_id
        );
        assert_eq!(
            item.gold,
            usize_of(&fi["gold"]),
            "{name}: doc {} gold",
            item.doc_id
        );
        let lengths: Vec<f64> = item
            .choices
            .iter()
            .map(|c| c.chars().count() as f64)
            .collect();
        let want: Vec<f64> = fi["choice_lengths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(lengths, want, "{name}: doc {} choice lengths", item.doc_id);
        for fs in fi["fewshot"].as_array().unwrap() {
            assert!(
                fs["duplicates"].as_array().unwrap().is_empty(),
                "{name}: duplicates"
            );
            pool.insert(usize_of(&fs["doc_id"]), convert(fs));
        }
        pool.insert(item.doc_id, item.clone());
        items.push(item);
    }
    (items, pool)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Few-shot draws, prompt strings, token ids and truncation equal lm-eval's exactly.
fn check_plan(p: &PlannedItem, fi: &Value, name: &str) {
    let doc = p.item.doc_id;
    let want_fewshot: Vec<usize> = fi["fewshot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| usize_of(&f["doc_id"]))
        .collect();
    assert_eq!(p.fewshot, want_fewshot, "{name}: doc {doc}: few-shot draw");
    let requests = fi["requests"].as_array().unwrap();
    assert_eq!(p.requests.len(), requests.len(), "{name}: doc {doc}");
    for (k, want) in requests.iter().enumerate() {
        let at = format!("{name}: doc {doc} request {k}");
        let (r, e, input) = (&p.requests[k], &p.encoded[k], &p.inputs[k]);
        let strings = [("context", &r.context), ("continuation", &r.continuation)];
        for (field, ours) in strings {
            assert_eq!(ours, want[field].as_str().unwrap(), "{at}: {field}");
        }
        let token_ids = [
            ("context_token_ids", &e.context_ids),
            ("continuation_token_ids", &e.continuation_ids),
        ];
        for (field, ours) in token_ids {
            assert_eq!(*ours, ids(&want[field]), "{at}: {field}");
        }
        let counts = [
            ("model_input_length", input.tokens.len()),
            ("truncated_tokens", input.truncated),
        ];
        for (field, ours) in counts {
            assert_eq!(ours, usize_of(&want[field]), "{at}: {field}");
        }
        assert_eq!(
            input.cut_continuation, 0,
            "{at}: lm-eval never cuts a continuation"
        );
    }
}

/// Log-likelihoods within the fixture's tolerance; is_greedy equal where it is robust.
fn check_scores(scores: &[Vec<Score>], fixture_items: &[Value], tol: &Value, name: &str) -> Diffs {
    let (atol, rtol) = (
        tol["loglikelihood"]["atol"].as_f64().unwrap(),
        tol["loglikelihood"]["rtol"].as_f64().unwrap(),
    );
    let margin_min = tol["greedy_margin_min"].as_f64().unwrap();
    let mut diffs = Diffs::default();
    for (item_scores, fi) in scores.iter().zip(fixture_items) {
        for (k, (s, want)) in item_scores
            .iter()
            .zip(fi["requests"].as_array().unwrap())
            .enumerate()
        {
            let expected = want["loglikelihood"].as_f64().unwrap();
            let d = (s.loglikelihood - expected).abs();
            let bound = atol + rtol * expected.abs();
            assert!(
                d <= bound,
                "{name}: doc {} request {k}: loglikelihood {} vs lm-eval {expected} (|diff| {d:e} > {bound:e})",
                fi["doc_id"], s.loglikelihood
            );
            diffs.ll_abs = diffs.ll_abs.max(d);
            diffs.ll_over_tol = diffs.ll_over_tol.max(d / bound);
            if want["greedy_margin"].as_f64().unwrap() >= margin_min {
                assert_eq!(
                    s.is_greedy,
                    want["is_greedy"] == true,
                    "{name}: doc {} request {k}: is_greedy",
                    fi["doc_id"]
                );
            }
        }
    }
    diffs
}

/// Per-item acc / acc_norm equal lm-eval's (unless two choices are within the tolerance of a
/// tie), and the aggregates recomputed from them equal lm-eval's report.
fn check_metrics(
    results: &[ItemResult],
    scores: &[Vec<Score>],
    fixture_items: &[Value],
    fx: &Value,
    metrics: Metrics,
    name: &str,
) {
    let tol = &fx["tolerances"];
    let (atol, rtol) = (
        tol["loglikelihood"]["atol"].as_f64().unwrap(),
        tol["loglikelihood"]["rtol"].as_f64().unwrap(),
    );
    let tie = tol["acc_tie_factor"].as_f64().unwrap();
    for ((r, s), fi) in results.iter().zip(scores).zip(fixture_items) {
        let max_ll = s.iter().map(|x| x.loglikelihood.abs()).fold(0.0, f64::max);
        let close = tie * (atol + rtol * max_ll);
        if fi["acc_margin"].as_f64().unwrap() >= close {
            assert_eq!(
                r.acc,
                fi["acc"].as_f64().unwrap(),
                "{name}: doc {} acc",
                r.doc_id
            );
        }
        match fi["acc_norm"].as_f64() {
            None => assert!(
                r.acc_norm.is_none(),
                "{name}: doc {}: acc_norm not reported by lm-eval",
                r.doc_id
            ),
            Some(want) if fi["acc_norm_margin"].as_f64().unwrap() >= close => {
                assert_eq!(r.acc_norm, Some(want), "{name}: doc {} acc_norm", r.doc_id)
            }
            Some(_) => {}
        }
    }
    let report = aggregate(name, 0, results, 1.0, metrics);
    let agg = &fx["aggregate"];
    let same = |a: f64, key: &str| {
        let want = agg[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: aggregate.{key}"));
        assert!(
            (a - want).abs() <= 1e-12,
            "{name}: {key} {a} vs lm-eval {want}"
        );
    };
    same(report.acc, "acc");
    same(report.acc_stderr, "acc_stderr");
    assert_eq!(
        report.acc_norm.is_some(),
        agg.get("acc_norm").is_some(),
        "{name}: acc_norm reported"
    );
    if let (Some(v), Some(se)) = (report.acc_norm, report.acc_norm_stderr) {
        same(v, "acc_norm");
        same(se, "acc_norm_stderr");
    }
    // F1 (CB): lm-eval's value; its stderr is a random bootstrap and not compared.
    assert_eq!(
        report.f1.is_some(),
        agg.get("f1").is_some(),
        "{name}: f1 reported"
    );
    if let Some(f1) = report.f1 {
        same(f1, "f1");
    }
}

/// `evaluate_task` (what `opt eval-tasks` runs, with its own batching) gives the same results as
/// the checked path; a model whose vocabulary is smaller than the tokenizer's is refused.
fn end_to_end<B: Backend>(
    model: &opt::model::Opt<B>,
    tokenizer: &OptTokenizer,
    def: &tasks::TaskDef,
    items: &[TaskItem],
    checked: &[ItemResult],
    device: &B::Device,
    name: &str,
) {
    let options = TaskOptions {
        shots: 0,
        limit: Some(5),
        batch: 3,
        seed: FEWSHOT_SEED,
        share_prefix: true,
    };
    let run = |m: &opt::model::Opt<B>| {
        evaluate_task(m, tokenizer, def.name, def.metrics, items, &options, device)
    };
    let (report, results) = run(model).unwrap();
    assert_eq!(report.items, 5, "{name}");
    for (a, b) in results.iter().zip(checked) {
        assert_eq!(
            (a.doc_id, a.pred, a.pred_norm),
            (b.doc_id, b.pred, b.pred_norm),
            "{name}"
        );
        for (x, y) in a.requests.iter().zip(&b.requests) {
            assert!(
                (x.loglikelihood - y.loglikelihood).abs() <= 1e-4 + 1e-6 * y.loglikelihood.abs(),
                "{name}: batching changed a score"
            );
        }
    }
    let mut small = model.clone();
    small.config.vocab_size = 1000;
    let e = run(&small).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}
