//! The server's Prometheus metrics (`GET /metrics`, text exposition format).

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    /// Rows dropped because their client went away.
    pub cancelled_rows: Counter,
    /// Decode steps, and rows decoded in them (their ratio is the mean batch).
    pub decode_steps: Counter,
    pub decoded_rows: Counter,
    pub queue_depth: Gauge,
    pub running_rows: Gauge,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under the `opt_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("opt");
        let requests = Family::<RequestLabels, Counter>::default();
        let (prompt_tokens, generation_tokens, cancelled_rows) =
            (Counter::default(), Counter::default(), Counter::default());
        let (decode_steps, decoded_rows) = (Counter::default(), Counter::default());
        let (queue_depth, running_rows) = (Gauge::default(), Gauge::default());
        // Seconds: 1 ms .. ~33 s for the first token, 0.5 ms .. ~2 s between tokens.
        let ttft = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.001, 2.0, 16,
        ));
        let itl = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.0005, 2.0, 13,
        ));
        registry.register(
            "requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens prefilled",
            prompt_tokens.clone(),
        );
        registry.register(
            "generation_tokens",
            "Tokens generated",
            generation_tokens.clone(),
        );
        registry.register(
            "cancelled_rows",
            "Rows dropped because their client went away",
            cancelled_rows.clone(),
        );
        registry.register("decode_steps", "Batched decode steps", decode_steps.clone());
        registry.register(
            "decoded_rows",
            "Rows decoded, summed over decode steps",
            decoded_rows.clone(),
        );
        registry.register(
            "queue_depth",
            "Sequences waiting to join the batch",
            queue_depth.clone(),
        );
        registry.register(
            "running_rows",
            "Sequences in the running batch",
            running_rows.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From arrival to the first generated token",
            ttft.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Between two tokens of one sequence",
            itl.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            prompt_tokens,
            generation_tokens,
            cancelled_rows,
            decode_steps,
            decoded_rows,
            queue_depth,
            running_rows,
            time_to_first_token: ttft,
            inter_token_latency: itl,
        }
    }

    /// Count a finished HTTP request.
    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}
