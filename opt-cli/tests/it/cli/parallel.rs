//! `opt train --devices` and `--nodes` as a user runs them: two workers log the losses of one, two
//! processes joined by `opt coordinator` on loopback log them too, and a node that is killed ends
//! the other node's run with an error (no hang), leaving a checkpoint that resumes.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{cli_backend, losses, ok, p, prepared};

/// Child processes killed when the test ends, however it ends.
struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port that was free a moment ago on loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `opt train` of the tiny preset on `data`, 4 micro-batches of 4 x 128 per update, dropout 0.1
/// (keyed masks: the same in every split of the update's micro-batches).
fn train_args(data: &Path, out: &Path, steps: &str, extra: &[&str]) -> Vec<String> {
    let b = cli_backend();
    let mut args: Vec<String> = [
        "train",
        "--preset",
        "tiny",
        "--data",
        p(data),
        "--dropout",
        "0.1",
        "--micro-batch",
        "4",
        "--batch-tokens",
        "2048",
        "--max-steps",
        steps,
        "--eval-every",
        "0",
        "--backend",
        &b,
        "--sample-prompt",
        "the",
        "--log-every",
        "1",
        "--out",
        p(out),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn spawn(args: &[String], log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_opt"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn coordinator(tmp: &Path, port: u16) -> Child {
    let addr = format!("127.0.0.1:{port}");
    spawn(
        &["coordinator", "--listen", &addr].map(String::from),
        &tmp.join("coordinator.log"),
    )
}

fn node(
    data: &Path,
    out: &Path,
    steps: &str,
    rank: usize,
    ports: (u16, u16),
    extra: &[&str],
) -> Child {
    let (coordinator, listen) = (
        format!("127.0.0.1:{}", ports.0),
        format!("127.0.0.1:{}", ports.1),
    );
    let mut flags = vec![
        "--nodes",
        "2",
        "--node-rank",
        if rank == 0 { "0" } else { "1" },
        "--devices",
        "1",
        "--coordinator",
        &coordinator,
        "--node-listen",
        &listen,
    ];
    flags.extend_from_slice(extra);
    let args = train_args(data, out, steps, &flags);
    spawn(&args, &out.with_extension("log"))
}

/// Wait for `child` to exit, at most `limit`.
fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn assert_same_losses(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    let mut worst = 0f64;
    for ((step, x), (_, y)) in a.iter().zip(b) {
        let r = (x - y).abs() / x.abs();
        worst = worst.max(r);
        assert!(r < 1e-5, "{what}, step {step}: {x} vs {y}");
    }
    worst
}

#[test]
fn devices_and_nodes_log_the_losses_of_one_device() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let args = train_args(&data, &out, "8", extra);
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        losses(&out)
    };
    let one = run("one", &["--devices", "1"]);
    let two = run("two", &["--devices", "2"]);
    assert_eq!(one.len(), 8);
    let worst = assert_same_losses(&one, &two, "--devices 2 vs --devices 1");
    println!("--devices 2 vs 1 over 8 steps: worst loss difference {worst:.1e} relative");

    // The same run as two processes on loopback, joined by a coordinator.
    let ports = (free_port(), free_port());
    let mut reaper = Reaper(vec![coordinator(tmp.path(), ports.0)]);
    let outs = [tmp.path().join("node0"), tmp.path().join("node1")];
    let started = Instant::now();
    for (rank, out) in outs.iter().enumerate() {
        let listen = free_port();
        reaper
            .0
            .push(node(&data, out, "8", rank, (ports.0, listen), &[]));
    }
    for (i, out) in outs.iter().enumerate() {
        let status = wait(&mut reaper.0[i + 1], Duration::from_secs(300));
        let log = std::fs::read_to_string(out.with_extension("log")).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "node {i} did not finish well ({status:?}):\n{log}"
        );
    }
    let nodes = losses(&outs[0]);
    let worst = assert_same_losses(&one, &nodes, "2 nodes vs --devices 1");
    assert!(losses(&outs[1]).is_empty(), "only node 0 writes metrics");
    println!(
        "2 nodes on loopback vs --devices 1: worst loss difference {worst:.1e} relative ({:.1?})",
        started.elapsed()
    );
}

#[test]
fn a_killed_node_ends_the_other_nodes_run() {
    node_failure("KILL");
}

/// A node that stops answering but keeps its connections (SIGSTOP) is caught by the watchdog.
#[test]
fn a_hung_node_ends_the_other_nodes_run_after_the_timeout() {
    node_failure("STOP");
}

/// Send `signal` to node 1 once node 0 logged 3 steps: node 0 must end with an error in < 60 s,
/// and its last checkpoint must resume.
fn node_failure(signal: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let ports = (free_port(), free_port());
    let mut reaper = Reaper(vec![coordinator(tmp.path(), ports.0)]);
    let outs = [tmp.path().join("node0"), tmp.path().join("node1")];
    // A short timeout keeps the test short; the default is 50 s.
    let extra = ["--checkpoint-every", "2", "--collective-timeout", "5"];
    for (rank, out) in outs.iter().enumerate() {
        reaper.0.push(node(
            &data,
            out,
            "100000",
            rank,
            (ports.0, free_port()),
            &extra,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while losses(&outs[0]).len() < 3 {
        assert!(Instant::now() < deadline, "the run never got going");
        assert!(
            reaper.0[1].try_wait().unwrap().is_none(),
            "node 0 ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = reaper.0[2].id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let killed = Instant::now();
    let status = wait(&mut reaper.0[1], Duration::from_secs(60));
    let log = std::fs::read_to_string(outs[0].with_extension("log")).unwrap();
    let Some(status) = status else {
        panic!("node 0 still runs 60 s after node 1 was killed:\n{log}");
    };
    println!(
        "node 0 exited {status} {:.1?} after node 1 got SIG{signal}",
        killed.elapsed()
    );
    assert!(!status.success(), "{log}");
    // One clear error, naming the rank and the cause, and no panic trace from the collective's
    // threads (the vendored burn-collective and burn-communication return a lost peer as an error).
    assert!(log.contains("Error: worker 0: "), "{log}");
    assert!(
        !log.contains("panicked"),
        "a panic trace besides our error:\n{log}"
    );

    // Its last checkpoint resumes, here on one process of two workers.
    let at = std::fs::read_dir(outs[0].join("checkpoints"))
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("a checkpoint");
    let b = cli_backend();
    let next = (at + 1).to_string();
    ok(&[
        "train",
        "--resume",
        p(&outs[0]),
        "--devices",
        "2",
        "--max-steps",
        &next,
        "--backend",
        &b,
        "--sample-prompt",
        "the",
    ]);
    assert_eq!(losses(&outs[0]).last().unwrap().0, at + 1);
}
