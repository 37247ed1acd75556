//! The engine: one thread owns the model and the KV cache and runs continuous batching. Each step
//! it drops rows whose client went away, admits waiting sequences (prefilled one by one, within
//! `max_batch` rows and `max_batch_tokens` prompt tokens), and decodes one token for every
//! running row. The HTTP side talks to it through channels only.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::prelude::Backend;
use opt_data::OptTokenizer;
use opt_model::Opt;

use crate::batch::{Batch, Row};
pub use crate::job::{Event, EventSender, FinishReason, Job, TokenOut};
use crate::metrics::Metrics;

/// Limits of the batch.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Rows decoded together.
    pub max_batch: usize,
    /// Sequences waiting to join the batch; more are refused (HTTP 429).
    pub max_queue: usize,
    /// Prompt tokens prefilled in one step (a longer prompt is admitted alone).
    pub max_batch_tokens: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_queue: 256,
            max_batch_tokens: 4096,
        }
    }
}

/// Whether the model can serve.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineState {
    Loading,
    Ready,
    Failed(String),
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    /// The queue has no room for this many sequences.
    QueueFull { waiting: usize, max_queue: usize },
    /// The engine is not running.
    Stopped,
}

struct Submission {
    jobs: Vec<Job>,
    events: EventSender,
    arrived: Instant,
}

/// The engine loop, not started yet: `run` loads the model and serves until every handle is
/// gone and no sequence is left.
pub struct EngineRunner(Box<dyn FnOnce() + Send>);

impl EngineRunner {
    /// Run the engine on this thread.
    pub fn run(self) {
        (self.0)()
    }
}

/// State the HTTP side and the engine thread share.
struct Shared {
    state: Mutex<EngineState>,
    waiting: AtomicUsize,
    running: AtomicUsize,
    abort: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The HTTP side's handle on the engine (cheap to clone).
#[derive(Clone)]
pub struct EngineHandle {
    submit: mpsc::Sender<Submission>,
    shared: Arc<Shared>,
    options: EngineOptions,
}

impl EngineHandle {
    /// The handle and the engine loop, for a caller that runs the loop on a thread it chooses
    /// (on CPU backends: a thread of the pool the kernels run on, see `opt serve`).
    pub fn new<B, F>(
        load: F,
        tokenizer: Arc<OptTokenizer>,
        options: EngineOptions,
        metrics: Arc<Metrics>,
    ) -> (Self, EngineRunner)
    where
        B: Backend,
        F: FnOnce() -> Result<Opt<B>, String> + Send + 'static,
    {
        let (submit, inbox) = mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(EngineState::Loading),
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            metrics,
        });
        let thread_shared = shared.clone();
        let run = move || {
            let model = match load() {
                Ok(m) => m,
                Err(e) => return thread_shared.set_state(EngineState::Failed(e)),
            };
            thread_shared.set_state(EngineState::Ready);
            let engine = Engine {
                model,
                tokenizer,
                options,
                shared: thread_shared.clone(),
                inbox,
                waiting: VecDeque::new(),
                batch: Batch::default(),
            };
            // A panic in a kernel must not leave clients waiting forever: their channels close
            // with the engine, and the state says why.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run()));
            if let Err(panic) = outcome {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                thread_shared.set_state(EngineState::Failed(format!("the engine stopped: {why}")));
            }
        };
        let handle = Self {
            submit,
            shared,
            options,
        };
        (handle, EngineRunner(Box::new(run)))
    }

    /// Queue a request's sequences; their events arrive on `events`.
    pub fn submit(&self, jobs: Vec<Job>, events: EventSender) -> Result<(), SubmitError> {
        let n = jobs.len();
        let max_queue = self.options.max_queue;
        let before = self.shared.waiting.fetch_add(n, Ordering::SeqCst);
        if before + n > max_queue {
            self.shared.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(SubmitError::QueueFull {
                waiting: before,
                max_queue,
            });
        }
        self.shared.metrics.queue_depth.inc_by(n as i64);
        let submission = Submission {
            jobs,
            events,
            arrived: Instant::now(),
        };
        self.submit.send(submission).map_err(|_| {
            self.shared.waiting.fetch_sub(n, Ordering::SeqCst);
            self.shared.metrics.queue_depth.dec_by(n as i64);
            SubmitError::Stopped
        })
    }

    /// Loading, ready, or failed (with why).
    pub fn state(&self) -> EngineState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sequences waiting and running.
    pub fn load(&self) -> (usize, usize) {
        (
            self.shared.waiting.load(Ordering::SeqCst),
            self.shared.running.load(Ordering::SeqCst),
        )
    }

    /// Stop every sequence now (the drain timeout passed): each ends with `Failed`.
    pub fn abort(&self) {
        self.shared.abort.store(true, Ordering::SeqCst);
    }

    /// The batch limits.
    pub fn options(&self) -> EngineOptions {
        self.options
    }
}

impl Shared {
    fn set_state(&self, state: EngineState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// A sequence waiting to join the batch.
struct Waiting {
    job: Job,
    index: usize,
    events: EventSender,
    arrived: Instant,
}

struct Engine<B: Backend> {
    model: Opt<B>,
    tokenizer: Arc<OptTokenizer>,
    options: EngineOptions,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Submission>,
    waiting: VecDeque<Waiting>,
    batch: Batch<B>,
}

impl<B: Backend> Engine<B> {
    /// Steps until every handle is gone and no sequence is left.
    fn run(mut self) {
        loop {
            let idle = self.waiting.is_empty() && self.batch.is_empty();
            if !self.receive(idle) && idle {
                return;
            }
            if self.shared.abort.swap(false, Ordering::SeqCst) {
                self.abort_all();
            }
            self.drop_cancelled_waiting();
            self.batch.retire(&self.shared.metrics);
            self.admit();
            self.publish_running();
            self.batch
                .step(&self.model, &self.tokenizer, &self.shared.metrics);
        }
    }

    /// Rows in the batch, for the drain and the metrics. Published before the step, so that a
    /// sequence is never counted in neither `waiting` nor `running`.
    fn publish_running(&self) {
        let n = self.batch.len();
        self.shared.running.store(n, Ordering::SeqCst);
        self.shared.metrics.running_rows.set(n as i64);
    }

    /// Take new submissions (waiting for one when idle); false once every handle is gone.
    fn receive(&mut self, idle: bool) -> bool {
        if idle {
            match self.inbox.recv_timeout(Duration::from_millis(50)) {
                Ok(s) => self.enqueue(s),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        loop {
            match self.inbox.try_recv() {
                Ok(s) => self.enqueue(s),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn enqueue(&mut self, s: Submission) {
        for (index, job) in s.jobs.into_iter().enumerate() {
            self.waiting.push_back(Waiting {
                job,
                index,
                events: s.events.clone(),
                arrived: s.arrived,
            });
        }
    }

    /// Sequences whose client went away before they started.
    fn drop_cancelled_waiting(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.events.is_closed());
        let gone = before - self.waiting.len();
        if gone > 0 {
            self.unqueue(gone);
            self.shared.metrics.cancelled_rows.inc_by(gone as u64);
        }
    }

    fn unqueue(&self, n: usize) {
        self.shared.waiting.fetch_sub(n, Ordering::SeqCst);
        self.shared.metrics.queue_depth.dec_by(n as i64);
    }

    /// Move waiting sequences into the batch within its row and prefill-token limits.
    fn admit(&mut self) {
        let mut rows = Vec::new();
        let (mut taken, mut tokens) = (0, 0);
        while self.batch.len() + rows.len() < self.options.max_batch {
            let Some(next) = self.waiting.front() else {
                break;
            };
            let len = next.job.prompt.len();
            if tokens > 0 && tokens + len > self.options.max_batch_tokens {
                break;
            }
            let w = self.waiting.pop_front().expect("a waiting sequence");
            (taken, tokens) = (taken + 1, tokens + len);
            let eos = self.model.config.eos_token_id as u32;
            let row = Row::new(w.job, w.index, w.events, w.arrived, eos);
            if let Some(prefilled) = row.prefill(&self.model, &self.tokenizer, &self.shared.metrics)
            {
                rows.push(prefilled);
            }
        }
        if !rows.is_empty() {
            self.batch.join(rows);
        }
        // Counted as running before they stop counting as waiting (the drain reads both).
        self.publish_running();
        self.unqueue(taken);
    }

    fn abort_all(&mut self) {
        let n = self.waiting.len();
        for w in self.waiting.drain(..) {
            let _ = w
                .events
                .send((w.index, Event::Failed("the server shut down".into())));
        }
        self.unqueue(n);
        self.batch.abort();
    }
}
