//! `opt serve` as a user runs it: it prints its address, answers, and on SIGTERM refuses new work
//! (503, `/health` too) while a running request finishes, then exits 0.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use opt::model::{checkpoint, Opt, OptConfig};
use opt::BackendTask;
use serde_json::json;

use super::{cli_backend, ok, p, write_text};

/// The server process, killed if the test ends early.
struct Served(Option<Child>);

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A random 8-layer model with 2048 positions (requests that last seconds) and a tokenizer.
fn model_dir(tmp: &Path) -> std::path::PathBuf {
    struct Save(std::path::PathBuf);
    impl BackendTask for Save {
        type Output = ();
        fn run<B: AutodiffBackend>(self, device: B::Device) {
            let config = OptConfig::with_shape(1000, 256, 8, 8);
            checkpoint::save_pretrained(&Opt::<B::InnerBackend>::new(&config, &device), &self.0)
                .unwrap();
        }
    }
    let dir = tmp.join("served-opt");
    opt::backend::run(opt::BackendKind::Flex, Save(dir.clone())).unwrap();
    let text = tmp.join("text.txt");
    write_text(&text);
    ok(&[
        "tokenizer",
        "train",
        "--input",
        p(&text),
        "--vocab-size",
        "300",
        "--out",
        p(&dir),
    ]);
    dir
}

fn status(url: &str) -> u16 {
    match ureq::get(&format!("{url}/health")).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

#[test]
fn serve_answers_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path());
    let b = cli_backend();
    let child = Command::new(env!("CARGO_BIN_EXE_opt"))
        .args([
            "serve",
            "--model",
            p(&dir),
            "--port",
            "0",
            "--backend",
            &b,
            "--drain-timeout",
            "120",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut served = Served(Some(child));
    let mut stderr = BufReader::new(served.0.as_mut().unwrap().stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    assert!(
        line.contains("`served-opt`"),
        "the model is named after its folder: {line}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while status(&url) != 200 {
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let models: serde_json::Value = ureq::get(&format!("{url}/v1/models"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "served-opt");

    // A long streamed request is running when SIGTERM arrives.
    let body = json!({"prompt": "the quick", "max_tokens": 400, "ignore_eos": true, "temperature": 0, "stream": true});
    let running = ureq::post(&format!("{url}/v1/completions"))
        .send_json(body)
        .unwrap();
    let mut running = BufReader::new(running.into_reader());
    let mut first = String::new();
    running.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    let pid = served.0.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // New work is refused while the running request finishes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&url) != 503 {
        if Instant::now() > deadline {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            panic!("/health never said 503 while draining: {log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match ureq::post(&format!("{url}/v1/completions"))
        .send_json(json!({"prompt": "a", "max_tokens": 1}))
    {
        Err(ureq::Error::Status(503, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("shutting down"),
                "{v}"
            );
        }
        other => {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            panic!("a request while draining: {other:?}\n{log}")
        }
    }
    let mut rest = String::new();
    running.read_to_string(&mut rest).unwrap();
    let all = first.clone() + &rest;
    let chunks: Vec<&str> = all
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(chunks.last(), Some(&"[DONE]"));
    let tokens = chunks
        .iter()
        .filter(|c| c.contains("\"finish_reason\":null"))
        .count();
    assert_eq!(tokens, 400, "the running request got every token");
    assert!(chunks[chunks.len() - 2].contains("\"finish_reason\":\"length\""));
    // Then the process exits 0.
    let mut child = served.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "opt serve did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    assert!(code.success(), "exit {code:?}: {log}");
    assert!(!log.contains("panicked"), "{log}");
}
