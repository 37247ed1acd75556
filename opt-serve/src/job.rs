//! What the engine is given and what it reports: a sequence to generate, its tokens as they
//! come, and why it ended.

use opt_model::generate::Sampling;
use tokio::sync::mpsc::UnboundedSender;

/// One sequence to generate: a prompt and its settings.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: Vec<u32>,
    /// New tokens at most (0: score the prompt only).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// The text is cut before the first of these, and the sequence stops.
    pub stop: Vec<String>,
    /// Keep going after `</s>`.
    pub ignore_eos: bool,
    /// Log-probabilities of the chosen tokens and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Also report the prompt tokens' log-probabilities (with `logprobs`).
    pub echo: bool,
}

/// A token as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// log p(token) under the model (before sampling settings); `None` for the first prompt token.
    pub logprob: Option<f32>,
    /// The most likely tokens at this position with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
    /// Text that became final with this token (possibly empty: held back, see `text.rs`).
    pub text: String,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `</s>` or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the engine sends about sequence `index` of a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// The prompt was run (`echo`): its tokens and log-probabilities when `logprobs` is set.
    Prompt(Vec<TokenOut>),
    /// One new token.
    Token(TokenOut),
    /// The sequence is complete; any text still held back comes with it.
    Done { reason: FinishReason, text: String },
    /// The sequence failed (the engine could not run it).
    Failed(String),
}

/// Events of a request: (sequence index in the request, event).
pub type EventSender = UnboundedSender<(usize, Event)>;
