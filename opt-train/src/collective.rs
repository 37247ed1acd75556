//! Every call into Burn's collective (`burn-collective` 0.21; its API changes after 0.21), each
//! under a watchdog: a peer that never makes its call must end the run with an error, not a hang.
//!
//! burn-collective blocks a caller until every peer has made the same call, with no timeout. Here
//! each call runs on a helper thread while the worker waits for its answer in short slices,
//! checking the run's abort flag (set when any worker of this process fails) and a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::config::TrainError;

/// How the workers of a run are laid out over processes ("nodes").
#[derive(Debug, Clone)]
pub struct Topology {
    /// Processes in the run, each with the same number of workers.
    pub nodes: usize,
    /// This process's index among them (0 writes metrics and checkpoints).
    pub node_rank: usize,
    /// The coordinator's address, `HOST:PORT` (`opt coordinator`); needed when `nodes > 1`.
    pub coordinator: Option<String>,
    /// Where the other nodes reach this one, `HOST:PORT`; needed when `nodes > 1`.
    pub node_listen: Option<String>,
    /// The longest a worker waits in one collective call for its peers.
    pub timeout: Duration,
    /// Test hook: a worker that fails on purpose (`OPT_TEST_FAULT` in the CLI).
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

/// A failure injected by tests: global rank `rank` fails at `step`, with an error or a panic.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub rank: usize,
    pub step: u64,
    pub panic: bool,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `RANK:STEP` or `RANK:STEP:panic`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let number = |p: &str| {
            p.parse()
                .map_err(|_| format!("`{s}` is not RANK:STEP[:panic]"))
        };
        match parts.as_slice() {
            [rank, step] | [rank, step, "panic"] => Ok(Self {
                rank: number(rank)? as usize,
                step: number(step)?,
                panic: parts.len() == 3,
            }),
            _ => Err(format!("`{s}` is not RANK:STEP[:panic]")),
        }
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            node_listen: None,
            timeout: Duration::from_secs(50),
            fault: None,
        }
    }
}

impl Topology {
    /// Check the multi-node fields against each other.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.nodes == 0 || self.node_rank >= self.nodes {
            return bad(format!(
                "node rank {} is not in 0..{} (the number of nodes)",
                self.node_rank, self.nodes
            ));
        }
        if self.nodes > 1 && (self.coordinator.is_none() || self.node_listen.is_none()) {
            return bad("a run on several nodes needs the coordinator's address and this node's listen address".into());
        }
        for addr in [&self.coordinator, &self.node_listen].into_iter().flatten() {
            host_port(addr)?;
        }
        Ok(())
    }
}

/// Split `HOST:PORT`, refusing anything else.
pub fn host_port(addr: &str) -> Result<(String, u16), TrainError> {
    let bad = || TrainError::Config(format!("`{addr}` is not HOST:PORT (e.g. 10.0.0.1:29500)"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Set by the first worker of this process that fails; every waiting worker then gives up.
#[derive(Debug, Clone, Default)]
pub(crate) struct AbortFlag(Arc<AtomicBool>);

impl AbortFlag {
    pub(crate) fn raise(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub(crate) fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// burn-collective keeps one server per backend type per process: one run at a time uses it.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Hold the process's collective for one run, starting from a clean server.
pub(crate) fn exclusive<B: Backend>() -> MutexGuard<'static, ()> {
    let guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    burn_collective::reset_collective::<B>();
    guard
}

/// Release every call still pending on the server (after a failed run). When the server itself
/// died (a peer node disconnected mid-reduce), burn-collective's client panics here: quietly ignored.
pub(crate) fn reset<B: Backend>() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let _ = std::panic::catch_unwind(burn_collective::reset_collective::<B>);
    std::panic::set_hook(hook);
}

/// One worker's membership in the run's collective, on the inner (non-autodiff) backend `B`.
pub(crate) struct Collective<B: Backend> {
    peer: PeerId,
    rank: usize,
    /// The ring all-reduce between nodes cuts a tensor into one slice per node: never fewer elements.
    min_len: usize,
    timeout: Duration,
    abort: AbortFlag,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend> Collective<B> {
    /// Join the run as local worker `local_rank` of `local_workers` (global rank `rank`).
    pub(crate) fn register(
        local_rank: usize,
        local_workers: usize,
        rank: usize,
        device: &B::Device,
        topology: &Topology,
        abort: AbortFlag,
    ) -> Result<Self, TrainError> {
        let mut config = CollectiveConfig::default().with_num_devices(local_workers);
        if topology.nodes > 1 {
            let (coordinator, listen) = (
                topology.coordinator.as_deref().unwrap_or_default(),
                topology.node_listen.as_deref().unwrap_or_default(),
            );
            let (_, port) = host_port(listen)?;
            let address = |a: &str| a.parse().expect("any string is an Address");
            config = config
                .with_num_nodes(topology.nodes as u32)
                .with_global_address(address(&format!("ws://{coordinator}")))
                .with_node_address(address(&format!("ws://{listen}")))
                .with_data_service_port(port);
        }
        let this = Self {
            peer: PeerId::from(local_rank),
            rank,
            min_len: topology.nodes,
            timeout: topology.timeout,
            abort,
            _backend: std::marker::PhantomData,
        };
        let (peer, device) = (this.peer, device.clone());
        // Joining waits for every node to start, which may take a while; later calls may not.
        let join_timeout = topology.timeout.max(Duration::from_secs(300));
        this.watched("joining the collective", join_timeout, move || {
            burn_collective::register::<B>(peer, device, config)
        })?;
        Ok(this)
    }

    /// The element-wise sum of `tensor` over every worker of the run.
    pub(crate) fn all_reduce_sum(
        &self,
        tensor: Tensor<B, 1>,
        what: &str,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let len = tensor.dims()[0];
        let tensor = match len < self.min_len {
            true => {
                let zeros = Tensor::zeros([self.min_len - len], &tensor.device());
                Tensor::cat(vec![tensor, zeros], 0)
            }
            false => tensor,
        };
        let (peer, primitive) = (self.peer, tensor.into_primitive().tensor());
        let reduced = self.watched(what, self.timeout, move || {
            burn_collective::all_reduce::<B>(peer, primitive, ReduceOperation::Sum)
        })?;
        Ok(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reduced)).slice(0..len))
    }

    /// Leave the collective at the end of a run.
    pub(crate) fn finish(self) -> Result<(), TrainError> {
        let peer = self.peer;
        self.watched("leaving the collective", self.timeout, move || {
            burn_collective::finish_collective::<B>(peer)
        })
    }

    /// Run the blocking `call` on a helper thread; give up when the run aborts or after `timeout`.
    fn watched<T: Send + 'static>(
        &self,
        what: &str,
        timeout: Duration,
        call: impl FnOnce() -> Result<T, burn_collective::CollectiveError> + Send + 'static,
    ) -> Result<T, TrainError> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("collective-{}", self.rank))
            .spawn(move || {
                let _ = tx.send(call());
            })
            .map_err(|e| self.error(what, format!("cannot start a thread: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => return Err(self.error(what, describe(&e))),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.error(what, "the collective server stopped".into()))
                }
                Err(mpsc::RecvTimeoutError::Timeout) if self.abort.raised() => {
                    return Err(TrainError::Aborted { rank: self.rank })
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    return Err(self.error(
                        what,
                        format!(
                            "no answer from the other workers within {:.0} s: a peer worker or \
                             node stopped or hangs (see its log)",
                            timeout.as_secs_f64()
                        ),
                    ))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn error(&self, what: &str, cause: String) -> TrainError {
        TrainError::Worker {
            rank: self.rank,
            message: format!("{what}: {cause}"),
        }
    }
}

/// A collective error in words (burn-collective's errors have no `Display`).
fn describe(e: &burn_collective::CollectiveError) -> String {
    use burn_collective::CollectiveError as E;
    match e {
        E::LocalServerMissing => {
            "the collective's server stopped (a peer node disconnected?)".into()
        }
        E::RegisterParamsMismatch => {
            "the workers disagree on the run's layout (--devices, --nodes)".into()
        }
        other => format!("{other:?}"),
    }
}

/// Serve as the coordinator of a multi-node run on `port` (all interfaces) until interrupted.
pub fn serve_coordinator(port: u16) -> Result<(), TrainError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| TrainError::Config(format!("cannot start the coordinator's runtime: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}
