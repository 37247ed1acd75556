//! `opt serve`'s library against a real HTTP client on an ephemeral loopback port: greedy
//! completions equal `generate`, streamed chunks add up to the response, concurrent requests give
//! what each gives alone, `echo` + `logprobs` equal the task scorer, every error in OpenAI's
//! shape, a client that goes away frees its row, a full queue answers 429.
//!
//! On wgpu only the first test runs (a smoke test): lavapipe compiles every shader on the CPU, and
//! the engine's numbers are the library's, which the parity suites check on wgpu.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use opt::data::OptTokenizer;
use opt::model::generate::{generate, GenerateConfig};
use opt::model::{checkpoint, Opt, OptConfig};
use opt::serve::{EngineOptions, HttpOptions};
use opt::BackendTask;
use serde_json::{json, Value};

use crate::common::{fixture_dirs, on_backend};

fn on_wgpu() -> bool {
    std::env::var("OPT_BACKEND").is_ok_and(|b| b == "wgpu")
}

/// Text to train a tokenizer of the fixture models' 1,000 ids on: made-up words of ASCII
/// letters, so that every id decodes to distinct, non-empty text.
fn corpus() -> Vec<String> {
    let syllables = [
        "ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "sh", "qu", "by", "xo", "fa",
    ];
    let mut x = 11u64;
    let mut next = move |n: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize % n
    };
    let words: Vec<String> = (0..3000)
        .map(|_| {
            (0..2 + next(4))
                .map(|_| syllables[next(syllables.len())])
                .collect()
        })
        .collect();
    (0..2000)
        .map(|_| {
            (0..12)
                .map(|_| words[next(words.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
                + "."
        })
        .collect()
}

/// A model folder: the first `forward` fixture (vocab 1000, 128 positions) or, with `long`, a
/// random 8-layer model with 2048 positions (for requests that must last seconds), plus a
/// 1,000-id tokenizer trained here.
fn model_dir(tmp: &Path, long: bool) -> PathBuf {
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    if long {
        struct Save(PathBuf);
        impl BackendTask for Save {
            type Output = ();
            fn run<B: AutodiffBackend>(self, device: B::Device) {
                let config = OptConfig::with_shape(1000, 256, 8, 8);
                let model = Opt::<B::InnerBackend>::new(&config, &device);
                checkpoint::save_pretrained(&model, &self.0).unwrap();
            }
        }
        on_backend(Save(dir.clone()));
    } else {
        let fixture = &fixture_dirs("forward")[0];
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
        }
    }
    let tok = opt::data::train_bpe(corpus().into_iter(), 1000, &dir).unwrap();
    assert_eq!(tok.vocab_size(), 1000, "every model id has a token");
    dir
}

/// A server on a free loopback port, stopped (with a short drain) when dropped.
struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Start {
    dir: PathBuf,
    engine: EngineOptions,
    api_key: Option<String>,
    max_body_bytes: usize,
}

impl Start {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.into(),
            engine: EngineOptions::default(),
            api_key: None,
            max_body_bytes: 1 << 20,
        }
    }
}

impl BackendTask for Start {
    type Output = Server;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Server {
        let config = OptConfig::load(self.dir.join("config.json")).unwrap();
        let tokenizer = OptTokenizer::from_dir(&self.dir).unwrap();
        let dir = self.dir.clone();
        let load = move || {
            checkpoint::load_pretrained::<B::InnerBackend>(&dir, &device).map_err(|e| e.to_string())
        };
        let http = HttpOptions {
            model_name: "test-model".into(),
            api_key: self.api_key,
            max_body_bytes: self.max_body_bytes,
        };
        let state = opt::serve::start(load, tokenizer, config, self.engine, http);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state;
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                opt::serve::serve(listener, served, shutdown, Duration::from_millis(500))
                    .await
                    .unwrap();
            });
        });
        let server = Server {
            url,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while get(&server.url, "/health").0 != 200 {
            assert!(Instant::now() < deadline, "the server never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

fn start(dir: &Path) -> Server {
    on_backend(Start::new(dir))
}

/// (status, body) of a GET.
fn get(url: &str, path: &str) -> (u16, String) {
    match ureq::get(&format!("{url}{path}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => (0, e.to_string()),
    }
}

/// (status, JSON body) of a POST with `headers`.
fn post_with(url: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = ureq::post(&format!("{url}{path}")).set("Content-Type", "application/json");
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let (code, text) = match req.send_string(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("POST {path}: {e}"),
    };
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{code} {text}: {e}"));
    (code, v)
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    post_with(url, "/v1/completions", &body.to_string(), &[])
}

fn complete(url: &str, body: &Value) -> Value {
    let (code, v) = post(url, body);
    assert_eq!(code, 200, "{v}");
    v
}

/// The `data:` payloads of a streamed completion, `[DONE]` excluded (asserted last).
fn stream(url: &str, body: &Value) -> Vec<Value> {
    let r = ureq::post(&format!("{url}/v1/completions"))
        .send_json(body.clone())
        .unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let mut events: Vec<String> = Vec::new();
    for line in std::io::BufReader::new(r.into_reader()).lines() {
        if let Some(d) = line.unwrap().strip_prefix("data: ") {
            events.push(d.to_string());
        }
    }
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events.pop();
    events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// One metric's value from `/metrics` (the first sample whose line starts with `name`).
fn metric(url: &str, name: &str) -> f64 {
    let (_, text) = get(url, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

/// What the library's `generate` gives each prompt alone.
struct Alone {
    dir: PathBuf,
    prompts: Vec<Vec<u32>>,
    max_new: Vec<usize>,
    eos: bool,
}

impl BackendTask for Alone {
    type Output = Vec<Vec<u32>>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Vec<Vec<u32>> {
        let model = checkpoint::load_pretrained::<B::InnerBackend>(&self.dir, &device).unwrap();
        self.prompts
            .iter()
            .zip(&self.max_new)
            .map(|(p, &n)| {
                let config = GenerateConfig {
                    max_new_tokens: n,
                    eos_token_id: self.eos.then_some(model.config.eos_token_id as u32),
                    ..Default::default()
                };
                generate(&model, std::slice::from_ref(p), &config, |_| {})
                    .unwrap()
                    .new_tokens
                    .remove(0)
            })
            .collect()
    }
}

fn text(v: &Value, choice: usize) -> &str {
    v["choices"][choice]["text"].as_str().unwrap()
}

#[test]
fn greedy_completions_equal_generate_and_the_stream_adds_up_to_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), false);
    let tok = OptTokenizer::from_dir(&dir).unwrap();
    let server = start(&dir);
    let texts = ["kalo mine rutavo", "zipe shqu byxo fa kami nelo ruta"];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let alone = on_backend(Alone {
        dir: dir.clone(),
        prompts: prompts.clone(),
        max_new: vec![24; 2],
        eos: true,
    });
    for (i, t) in texts.iter().enumerate() {
        let want_text = tok.decode(&alone[i], true).unwrap();
        let want_reason = if alone[i].len() < 24 {
            "stop"
        } else {
            "length"
        };
        let body = json!({"model": "test-model", "prompt": t, "max_tokens": 24, "temperature": 0, "logprobs": 0});
        let v = complete(&server.url, &body);
        assert_eq!(v["object"], "text_completion");
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(text(&v, 0), want_text, "prompt {i}");
        assert_eq!(v["choices"][0]["finish_reason"], want_reason);
        let names: Vec<String> = alone[i]
            .iter()
            .map(|&id| tok.decode(&[id], false).unwrap())
            .collect();
        assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(names));
        assert_eq!(v["usage"]["prompt_tokens"], prompts[i].len());
        assert_eq!(v["usage"]["completion_tokens"], alone[i].len());
        // The same prompt as token ids.
        let by_ids = complete(
            &server.url,
            &json!({"prompt": prompts[i], "max_tokens": 24, "temperature": 0}),
        );
        assert_eq!(text(&by_ids, 0), want_text);
        // Streamed: the chunks add up to the text, then the finish reason, then usage.
        let body = json!({"prompt": t, "max_tokens": 24, "temperature": 0, "stream": true,
            "stream_options": {"include_usage": true}});
        let chunks = stream(&server.url, &body);
        let (usage, chunks) = chunks.split_last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], v["usage"]);
        let streamed: String = chunks.iter().map(|c| text(c, 0)).collect();
        assert_eq!(streamed, want_text);
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            want_reason
        );
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
    }
    // A stop string: the text ends before it, the finish reason is `stop`, and the stream holds
    // back what could become it.
    let base = json!({"prompt": texts[1], "max_tokens": 24, "temperature": 0, "ignore_eos": true});
    let want = text(&complete(&server.url, &base), 0).to_string();
    let chars: Vec<char> = want.chars().filter(|&c| c != '\u{FFFD}').collect();
    assert!(chars.len() >= 6, "the greedy text is long enough: {want:?}");
    let stop: String = chars[3..5].iter().collect();
    let cut = &want[..want.find(&stop).unwrap()];
    let mut body = base.clone();
    body["stop"] = json!([stop, "never"]);
    let v = complete(&server.url, &body);
    assert_eq!(
        (text(&v, 0), &v["choices"][0]["finish_reason"]),
        (cut, &json!("stop"))
    );
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = stream(&server.url, &streamed);
    assert_eq!(chunks.iter().map(|c| text(c, 0)).collect::<String>(), cut);
    // A list of prompts with n = 2: one choice per (prompt, n), prompt-major.
    let v = complete(
        &server.url,
        &json!({"prompt": texts, "n": 2, "max_tokens": 24, "temperature": 0}),
    );
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (k, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], k);
        assert_eq!(
            c["text"],
            tok.decode(&alone[k / 2], true).unwrap(),
            "choice {k}"
        );
    }
    let completion: usize = alone.iter().map(|a| 2 * a.len()).sum();
    assert_eq!(v["usage"]["completion_tokens"], completion);
    // echo: the prompt's text comes first.
    let v = complete(
        &server.url,
        &json!({"prompt": texts[0], "max_tokens": 3, "temperature": 0, "echo": true}),
    );
    assert!(text(&v, 0).starts_with(texts[0]), "{v}");
}

/// Token prompts in 4..300 after `</s>`, of `len` tokens.
fn random_prompt(len: usize, seed: u64) -> Vec<u32> {
    let mut x = seed;
    std::iter::once(2)
        .chain((1..len).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            4 + ((x >> 33) % 296) as u32
        }))
        .collect()
}

#[test]
fn concurrent_requests_give_what_each_gives_alone() {
    if on_wgpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), false);
    let tok = OptTokenizer::from_dir(&dir).unwrap();
    let server = on_backend(Start {
        engine: EngineOptions {
            max_batch: 8,
            ..Default::default()
        },
        ..Start::new(&dir)
    });
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| random_prompt(3 + 7 * i, i as u64)).collect();
    let max_new: Vec<usize> = (0..8).map(|i| 40 + 9 * (i % 4)).collect();
    let alone = on_backend(Alone {
        dir: dir.clone(),
        prompts: prompts.clone(),
        max_new: max_new.clone(),
        eos: false,
    });
    // A seeded sampled request, alone first.
    let sampled = json!({"prompt": prompts[3], "max_tokens": 40, "temperature": 0.9, "top_k": 50,
        "top_p": 0.95, "seed": 1234, "ignore_eos": true});
    let sampled_alone = text(&complete(&server.url, &sampled), 0).to_string();
    let (steps0, rows0) = (
        metric(&server.url, "opt_decode_steps_total"),
        metric(&server.url, "opt_decoded_rows_total"),
    );
    let barrier = Arc::new(std::sync::Barrier::new(9));
    let handles: Vec<_> = (0..9)
        .map(|i| {
            let (url, barrier) = (server.url.clone(), barrier.clone());
            let body = if i < 8 {
                json!({"prompt": prompts[i], "max_tokens": max_new[i], "temperature": 0, "ignore_eos": true})
            } else {
                sampled.clone()
            };
            std::thread::spawn(move || {
                barrier.wait();
                let v = complete(&url, &body);
                text(&v, 0).to_string()
            })
        })
        .collect();
    let got: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for i in 0..8 {
        assert_eq!(
            got[i],
            tok.decode(&alone[i], true).unwrap(),
            "request {i} in a batch vs alone"
        );
    }
    assert_eq!(
        got[8], sampled_alone,
        "a seeded sampled request in a batch vs alone"
    );
    let rows = metric(&server.url, "opt_decoded_rows_total") - rows0;
    let steps = metric(&server.url, "opt_decode_steps_total") - steps0;
    println!("concurrent: {rows} rows decoded in {steps} steps");
    assert!(
        rows / steps > 2.0,
        "the requests were not batched: {rows} rows in {steps} steps"
    );
}

/// `score_requests`, the task scorer's request path.
struct Scores {
    dir: PathBuf,
    inputs: Vec<opt::data::tasks::ModelInput>,
}

impl BackendTask for Scores {
    type Output = Vec<f64>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Vec<f64> {
        let model = checkpoint::load_pretrained::<B::InnerBackend>(&self.dir, &device).unwrap();
        let inputs: Vec<&_> = self.inputs.iter().collect();
        opt::eval::tasks::score_requests(&model, &inputs, 4, &device)
            .iter()
            .map(|s| s.loglikelihood)
            .collect()
    }
}

#[test]
fn echo_logprobs_equal_the_task_scorer() {
    if on_wgpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), false);
    let server = start(&dir);
    for (len, seed) in [(9usize, 5u64), (40, 6)] {
        let prompt = random_prompt(len, seed);
        // What lm-evaluation-harness's `local-completions` sends.
        let v = complete(
            &server.url,
            &json!({"prompt": [prompt.clone()], "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0}),
        );
        let lp = &v["choices"][0]["logprobs"];
        let token_logprobs = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(token_logprobs.len(), len);
        assert!(token_logprobs[0].is_null() && lp["top_logprobs"][0].is_null());
        assert_eq!(v["usage"]["completion_tokens"], 0);
        let spans = [1, 3, len - 1];
        let inputs = spans
            .iter()
            .map(|&k| opt::data::tasks::ModelInput {
                tokens: prompt[..len - 1].to_vec(),
                continuation: prompt[len - k..].to_vec(),
                truncated: 0,
                cut_continuation: 0,
            })
            .collect();
        let scores = on_backend(Scores {
            dir: dir.clone(),
            inputs,
        });
        for (&k, want) in spans.iter().zip(scores) {
            let got: f64 = token_logprobs[len - k..]
                .iter()
                .map(|x| x.as_f64().unwrap())
                .sum();
            println!("prompt of {len}, last {k} tokens: server {got:.7}, scorer {want:.7}");
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "last {k} tokens: {got} vs {want}"
            );
        }
        // One new token with echo: the same prompt numbers, one more token.
        let v1 = complete(
            &server.url,
            &json!({"prompt": prompt, "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0}),
        );
        let lp1 = &v1["choices"][0]["logprobs"]["token_logprobs"];
        assert_eq!(lp1.as_array().unwrap().len(), len + 1);
        assert_eq!(lp1.as_array().unwrap()[..len], token_logprobs[..]);
        // The greedy token is its position's best alternative.
        let top = v1["choices"][0]["logprobs"]["top_logprobs"][len]
            .as_object()
            .unwrap();
        let best = top
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(lp1[len].as_f64().unwrap(), best);
    }
}

/// Polls `done` for up to 30 s.
fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error_of(v: &Value) -> &Value {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    e
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    if on_wgpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), false);
    let server = on_backend(Start {
        api_key: Some("sekret".into()),
        max_body_bytes: 4096,
        ..Start::new(&dir)
    });
    let url = &server.url;
    let auth = [("Authorization", "Bearer sekret")];
    let ok = json!({"prompt": "kalo mine", "max_tokens": 2});
    // The key.
    for headers in [&[][..], &[("Authorization", "Bearer nope")][..]] {
        let (code, v) = post_with(url, "/v1/completions", &ok.to_string(), headers);
        assert_eq!(code, 401);
        assert_eq!(error_of(&v)["type"], "authentication_error");
    }
    assert_eq!(
        post_with(url, "/v1/completions", &ok.to_string(), &auth).0,
        200
    );
    assert_eq!(get(url, "/health").0, 200);
    assert_eq!(get(url, "/v1/models").0, 401);
    // Each bad field is named.
    let cases = [
        (json!({"prompt": "a", "temperature": "hot"}), "temperature"),
        (json!({"prompt": "a", "top_p": 1.5}), "top_p"),
        (json!({"prompt": "a", "top_k": 0}), "top_k"),
        (json!({"prompt": "a", "n": 0}), "n"),
        (
            json!({"prompt": "a", "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (json!({"prompt": "a", "logprobs": 6}), "logprobs"),
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "a", "max_tokens": -1}), "max_tokens"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": [2, "a"]}), "prompt"),
        (json!({"prompt": [2, 5000]}), "prompt"),
        (json!({"prompt": {"text": "a"}}), "prompt"),
        (json!({"max_tokens": 2}), "prompt"),
        (
            json!({"prompt": "the fox", "max_tokens": 126}),
            "max_tokens",
        ),
        (json!({"prompt": "a", "logit_bias": {"5": 1}}), "logit_bias"),
    ];
    for (body, param) in cases {
        let (code, v) = post_with(url, "/v1/completions", &body.to_string(), &auth);
        assert_eq!(code, 400, "{body} -> {v}");
        let e = error_of(&v);
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["param"], param, "{body} -> {v}");
    }
    let (code, v) = post_with(url, "/v1/completions", "{not json", &auth);
    assert_eq!((code, &error_of(&v)["param"]), (400, &json!("body")));
    let (code, v) = post_with(
        url,
        "/v1/completions",
        &json!({"model": "gpt-4", "prompt": "a"}).to_string(),
        &auth,
    );
    assert_eq!(code, 404);
    assert_eq!(error_of(&v)["code"], "model_not_found");
    let big = json!({"prompt": "a ".repeat(3000)}).to_string();
    let (code, v) = post_with(url, "/v1/completions", &big, &auth);
    assert_eq!(code, 413);
    error_of(&v);
    let (code, v) = post_with(url, "/v2/nothing", "{}", &auth);
    assert_eq!(code, 404);
    error_of(&v);
    // Tokenize and detokenize round-trip.
    let (code, v) = post_with(
        url,
        "/tokenize",
        &json!({"prompt": "the lazy dog"}).to_string(),
        &auth,
    );
    assert_eq!(code, 200);
    let (code, back) = post_with(
        url,
        "/detokenize",
        &json!({"tokens": v["tokens"]}).to_string(),
        &auth,
    );
    assert_eq!((code, back["prompt"].as_str()), (200, Some("the lazy dog")));
    let (code, v) = post_with(
        url,
        "/detokenize",
        &json!({"tokens": [5000]}).to_string(),
        &auth,
    );
    assert_eq!((code, &error_of(&v)["param"]), (400, &json!("tokens")));
    // Every answer above was counted by status.
    let (_, metrics) = get(url, "/metrics");
    assert!(
        metrics.contains("opt_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"),
        "{metrics}"
    );
}

#[test]
fn a_full_queue_answers_429_and_a_client_that_goes_away_frees_its_row() {
    if on_wgpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Requests of 1,500 tokens on an 8-layer model: they last seconds.
    let dir = model_dir(tmp.path(), true);
    let server = on_backend(Start {
        engine: EngineOptions {
            max_batch: 1,
            max_queue: 1,
            ..Default::default()
        },
        ..Start::new(&dir)
    });
    let url = server.url.clone();
    let long = json!({"prompt": [2, 10, 11], "max_tokens": 1500, "ignore_eos": true, "temperature": 0, "stream": true});
    // A: the running row. Read its first chunk, then keep the connection.
    let a = ureq::post(&format!("{url}/v1/completions"))
        .send_json(long.clone())
        .unwrap();
    let mut a = std::io::BufReader::new(a.into_reader());
    let mut line = String::new();
    a.read_line(&mut line).unwrap();
    assert!(line.starts_with("data: "), "{line}");
    wait_for(
        || metric(&url, "opt_running_rows") == 1.0,
        "A to be running",
    );
    // B: waits for the one row (the queue's one place).
    let b = ureq::post(&format!("{url}/v1/completions"))
        .send_json(long.clone())
        .unwrap();
    assert_eq!(metric(&url, "opt_queue_depth"), 1.0);
    // C: no room.
    let (code, v) = post(&url, &json!({"prompt": "a", "max_tokens": 1}));
    assert_eq!(code, 429, "{v}");
    assert_eq!(error_of(&v)["type"], "rate_limit_error");
    // A and B go away: their rows (running and waiting) are freed within a step.
    drop(a);
    drop(b);
    wait_for(
        || {
            metric(&url, "opt_cancelled_rows_total") == 2.0
                && metric(&url, "opt_running_rows") == 0.0
                && metric(&url, "opt_queue_depth") == 0.0
        },
        "the rows of the clients that went away to be freed",
    );
    // And the server keeps serving.
    let v = complete(
        &url,
        &json!({"prompt": [2, 10], "max_tokens": 3, "temperature": 0}),
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);
}
