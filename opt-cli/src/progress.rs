//! Training progress: a bar on a terminal; plain lines (step, loss, lr, tok/s, ETA) when stderr is a
//! pipe, a log file or a batch scheduler's output, so such logs show the run as it goes.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use opt::train::StepMetrics;

/// Seconds between two progress lines off a terminal when `--log-every` is not given.
const DEFAULT_LINE_SECONDS: u64 = 10;

/// Where progress goes.
pub enum Progress {
    Bar(ProgressBar),
    Lines {
        max_steps: u64,
        /// A line every this many updates; `None`: about every 10 seconds.
        every: Option<u64>,
        started: Instant,
        first_step: Option<u64>,
        last_line: Option<Instant>,
    },
}

impl Progress {
    /// A bar when stderr is a terminal, else lines every `every` updates (about 10 s if `None`).
    pub fn new(max_steps: u64, every: Option<u64>) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(max_steps);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("template"),
            );
            Self::Bar(bar)
        } else {
            Self::Lines {
                max_steps,
                every: every.filter(|&n| n > 0),
                started: Instant::now(),
                first_step: None,
                last_line: None,
            }
        }
    }

    /// Report one update.
    pub fn step(&mut self, m: &StepMetrics) {
        match self {
            Self::Bar(bar) => {
                bar.set_position(m.step);
                bar.set_message(summary(m));
            }
            Self::Lines {
                max_steps,
                every,
                started,
                first_step,
                last_line,
            } => {
                let first = *first_step.get_or_insert(m.step);
                let due = match every {
                    Some(n) => m.step.is_multiple_of(*n),
                    None => last_line
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(DEFAULT_LINE_SECONDS)),
                };
                if due || m.val_loss.is_some() || m.step == *max_steps {
                    let done = (m.step + 1 - first) as f64;
                    let left = max_steps.saturating_sub(m.step) as f64;
                    let eta = started.elapsed().as_secs_f64() / done * left;
                    eprintln!(
                        "step {}/{} {} eta {}",
                        m.step,
                        max_steps,
                        summary(m),
                        clock(eta)
                    );
                    *last_line = Some(Instant::now());
                }
            }
        }
    }

    /// End the bar (lines need no end).
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// `loss 4.123 val 4.5 lr 1.00e-3 gnorm 0.45 6817 tok/s mfu 3.1%`
fn summary(m: &StepMetrics) -> String {
    let val = m
        .val_loss
        .map(|v| format!(" val {v:.3}"))
        .unwrap_or_default();
    let mfu = m
        .mfu
        .map(|v| format!(" mfu {:.1}%", 100.0 * v))
        .unwrap_or_default();
    format!(
        "loss {:.3}{val} lr {:.2e} gnorm {:.2} {:.0} tok/s{mfu}",
        m.loss, m.lr, m.grad_norm, m.tokens_per_second
    )
}

/// `1h02m03s`, `4m05s`, `6s`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}
