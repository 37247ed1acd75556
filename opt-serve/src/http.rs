//! The HTTP routes: `/v1/completions` (JSON or SSE), `/v1/models`, `/health`, `/metrics`,
//! `/tokenize`, `/detokenize`; bearer-key auth, a body limit, and every error in OpenAI's shape.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use opt_data::OptTokenizer;
use opt_model::OptConfig;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, Checked};
use crate::engine::{EngineHandle, EngineState, SubmitError};
use crate::error::ApiError;
use crate::job::Event;
use crate::metrics::Metrics;
use crate::response::{self, Choice, Header};

/// Server settings that are not the engine's.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The name `/v1/models` lists and requests may give as `model`.
    pub model_name: String,
    /// Required as `Authorization: Bearer KEY` on every route but `/health` and `/metrics`.
    pub api_key: Option<String>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
}

/// Everything a handler needs.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<OptTokenizer>,
    /// The served model's config (its vocabulary and positions bound the requests).
    pub config: OptConfig,
    pub options: HttpOptions,
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM/SIGINT: new work gets 503 while running work finishes.
    pub draining: AtomicBool,
}

/// The server's routes on `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .merge(protected)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .with_state(state)
}

/// Count every response by endpoint and status.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    let endpoint = match path.as_str() {
        "/v1/completions" | "/v1/models" | "/health" | "/metrics" | "/tokenize" | "/detokenize" => {
            path.as_str()
        }
        _ => "other",
    };
    state.metrics.request(endpoint, response.status().as_u16());
    response
}

/// `--api-key`: a bearer token on the protected routes.
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "a valid API key is required: `Authorization: Bearer KEY`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Equality in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, what) = match state.engine.state() {
        _ if state.draining.load(Ordering::SeqCst) => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining".to_string())
        }
        EngineState::Ready => (StatusCode::OK, "ok".to_string()),
        EngineState::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading".to_string()),
        EngineState::Failed(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}")),
    };
    (status, Json(json!({"status": what}))).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.options.model_name,
        "object": "model",
        "created": now(),
        "owned_by": "opt-on-burn",
        "max_model_len": state.config.max_position_embeddings,
    }]}))
}

/// A JSON body, or the error that names what is wrong with it.
fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(body_error)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("body", format!("the body is not JSON: {e}")))
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "request_too_large",
            "the request body is larger than the server's limit (--max-body-bytes)",
        )
    } else {
        ApiError::new(status, "bad_body", rejection.body_text())
    }
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let v = body_json(body)?;
    let text = v["prompt"]
        .as_str()
        .ok_or_else(|| ApiError::invalid("prompt", "prompt must be a string"))?;
    let ids = state
        .tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    Ok(Json(json!({
        "tokens": ids,
        "count": ids.len(),
        "max_model_len": state.config.max_position_embeddings,
    })))
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let v = body_json(body)?;
    let bad = || ApiError::invalid("tokens", "tokens must be a list of token ids");
    let ids = v["tokens"]
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let vocab = state.config.vocab_size;
    if let Some(id) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(ApiError::invalid(
            "tokens",
            format!("token id {id} is outside the model's vocabulary of {vocab}"),
        ));
    }
    let text = state
        .tokenizer
        .decode(&ids, true)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({"prompt": text})))
}

/// `POST /v1/completions`.
async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if state.draining.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ));
    }
    if state.engine.state() != EngineState::Ready {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the model is not ready (see /health)",
        ));
    }
    let body = body.map_err(body_error)?;
    let req = api::parse(&body)?;
    if let Some(m) = &req.model {
        if m != &state.options.model_name {
            return Err(ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!(
                        "the model `{m}` does not exist; this server serves `{}`",
                        state.options.model_name
                    ),
                )
            });
        }
    }
    let checked = api::check(req, &state.tokenizer, &state.config)?;
    let max_queue = state.engine.options().max_queue;
    if checked.jobs.len() > max_queue {
        return Err(ApiError::invalid(
            "n",
            format!(
                "the request has {} sequences (prompts x n); the queue holds at most {max_queue}",
                checked.jobs.len()
            ),
        ));
    }
    let (events, rx) = unbounded_channel();
    state
        .engine
        .submit(checked.jobs.clone(), events)
        .map_err(|e| match e {
            SubmitError::QueueFull { waiting, max_queue } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("the server is busy: {waiting} sequences are waiting (--max-queue {max_queue}); retry later"),
            ),
            SubmitError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_stopped",
                "the engine has stopped",
            ),
        })?;
    let header = Header {
        id: completion_id(),
        created: now(),
        model: state.options.model_name.clone(),
    };
    let run = Run::new(checked, header, state.tokenizer.clone(), rx);
    Ok(if run.checked.stream {
        Sse::new(run.stream())
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        Json(run.collect().await?).into_response()
    })
}

/// One request's sequences as their events arrive.
struct Run {
    checked: Checked,
    header: Header,
    tokenizer: Arc<OptTokenizer>,
    rx: UnboundedReceiver<(usize, Event)>,
    choices: Vec<Choice>,
    done: usize,
}

/// A streamed piece: a chunk's choice, or the end of one sequence.
enum Update {
    Chunk(Value),
    Failed(String),
}

impl Run {
    fn new(
        checked: Checked,
        header: Header,
        tokenizer: Arc<OptTokenizer>,
        rx: UnboundedReceiver<(usize, Event)>,
    ) -> Self {
        let mut choices: Vec<Choice> = (0..checked.jobs.len()).map(|_| Choice::default()).collect();
        if checked.echo {
            for (i, c) in choices.iter_mut().enumerate() {
                c.text = checked.prompts[i / checked.n].text.clone();
            }
        }
        Self {
            checked,
            header,
            tokenizer,
            rx,
            choices,
            done: 0,
        }
    }

    fn logprobs_on(&self) -> bool {
        self.checked.jobs[0].logprobs.is_some()
    }

    /// Apply one event; what a stream sends for it.
    fn apply(&mut self, index: usize, event: Event) -> Update {
        let logprobs = self.logprobs_on();
        let tokenizer = &self.tokenizer;
        let c = &mut self.choices[index];
        let prompt = matches!(event, Event::Prompt(_));
        let (text, tokens, finish) = match event {
            Event::Prompt(tokens) => (c.text.clone(), tokens, None),
            Event::Token(token) => {
                c.completion_tokens += 1;
                (token.text.clone(), vec![token], None)
            }
            Event::Done { reason, text } => {
                self.done += 1;
                (text, Vec::new(), Some(reason))
            }
            Event::Failed(why) => {
                self.done += 1;
                return Update::Failed(why);
            }
        };
        let offset = c.text_offset;
        c.text_offset += tokens
            .iter()
            .map(|t| response::width(t.id, tokenizer))
            .sum::<usize>();
        let shown = (logprobs && !tokens.is_empty()).then_some((&tokens[..], offset));
        let chunk = response::choice(index, &text, shown, finish, tokenizer);
        if finish.is_some() {
            c.finish = finish;
        }
        // The prompt's text is already in `c.text` (echo).
        if !prompt {
            c.text.push_str(&text);
        }
        c.tokens.extend(tokens);
        Update::Chunk(chunk)
    }

    fn usage(&self) -> Value {
        let prompt: usize = self.checked.prompts.iter().map(|p| p.ids.len()).sum();
        let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
        response::usage(prompt, completion)
    }

    /// Wait for every sequence; the whole response.
    async fn collect(mut self) -> Result<Value, ApiError> {
        while self.done < self.choices.len() {
            let Some((index, event)) = self.rx.recv().await else {
                return Err(engine_gone());
            };
            if let Update::Failed(why) = self.apply(index, event) {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "generation_failed",
                    why,
                ));
            }
        }
        let choices = self
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let logprobs = self.logprobs_on().then_some((&c.tokens[..], 0));
                response::choice(i, &c.text, logprobs, c.finish, &self.tokenizer)
            })
            .collect();
        Ok(self.header.object(choices, Some(self.usage())))
    }

    /// Server-sent events: a chunk per token, a usage chunk when asked, then `[DONE]`.
    fn stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        let include_usage = self.checked.include_usage;
        stream::unfold(Some(self), move |run| async move {
            let mut run = run?;
            if run.done == run.choices.len() {
                let mut events = Vec::new();
                if include_usage {
                    let usage = run.header.object(Vec::new(), Some(run.usage()));
                    events.push(SseEvent::default().data(usage.to_string()));
                }
                events.push(SseEvent::default().data("[DONE]"));
                return Some((stream::iter(events), None));
            }
            let events = match run.rx.recv().await {
                None => return Some((stream::iter(vec![error_event(&engine_gone())]), None)),
                Some((index, event)) => match run.apply(index, event) {
                    Update::Chunk(choice) => {
                        let usage = include_usage.then_some(Value::Null);
                        vec![SseEvent::default()
                            .data(run.header.object(vec![choice], usage).to_string())]
                    }
                    Update::Failed(why) => vec![error_event(&ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "generation_failed",
                        why,
                    ))],
                },
            };
            Some((stream::iter(events), Some(run)))
        })
        .flatten()
        .map(Ok)
    }
}

fn error_event(e: &ApiError) -> SseEvent {
    SseEvent::default().data(e.body().to_string())
}

fn engine_gone() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "engine_stopped",
        "the engine stopped before the request finished",
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `cmpl-` and 16 hex digits.
fn completion_id() -> String {
    format!("cmpl-{:016x}", api::unique_u64())
}
