//! An OpenAI-compatible chat-completions twin: `POST /v1/chat/completions`
//! answered from a script, one step per request, with bodies shaped like the
//! API's (what `async-openai` parses), recording every request. A step can
//! answer from the request (the template narrative the prompt carries, with a
//! claim planted in it), call tools (as the investigation agent's model
//! would), answer from what the tools returned, fail, or answer too late.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

/// What the twin does with the next request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Answer with this text.
    Say(String),
    /// Answer with the template narrative found in the prompt, followed by
    /// this sentence (empty: the template as it is, a faithful draft).
    Template(String),
    /// Answer with this HTTP status and an API error body.
    Fail(u16),
    /// Answer after this long (past the client's timeout).
    Stall(Duration),
    /// Call these tools (name, arguments).
    Call(Vec<(String, Value)>),
    /// Answer with what this writes from the request's body (its messages,
    /// the tool results among them).
    Reply(Replier),
}

/// Writes an answer from a request's body.
#[derive(Clone)]
pub struct Replier(pub Arc<dyn Fn(&Value) -> String + Send + Sync>);

impl std::fmt::Debug for Replier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replier")
    }
}

impl Step {
    pub fn reply(f: impl Fn(&Value) -> String + Send + Sync + 'static) -> Step {
        Step::Reply(Replier(Arc::new(f)))
    }

    pub fn call(name: &str, args: Value) -> Step {
        Step::Call(vec![(name.to_owned(), args)])
    }
}

/// The tool results of a request, in order: (tool name, parsed content).
pub fn tool_results(body: &Value) -> Vec<(String, Value)> {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let mut names = std::collections::HashMap::new();
    for m in &messages {
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            names.insert(
                c["id"].as_str().unwrap_or_default().to_owned(),
                c["function"]["name"].as_str().unwrap_or_default().to_owned(),
            );
        }
    }
    messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            let id = m["tool_call_id"].as_str().unwrap_or_default();
            let content = m["content"].as_str().unwrap_or_default();
            (names.get(id).cloned().unwrap_or_default(), serde_json::from_str(content).unwrap_or(Value::Null))
        })
        .collect()
}

/// A request the twin received.
#[derive(Debug, Clone)]
pub struct Asked {
    pub model: String,
    pub body: Value,
    /// Every message's content, joined.
    pub text: String,
    pub authorization: Option<String>,
}

#[derive(Debug, Default)]
pub struct TwinState {
    pub script: VecDeque<Step>,
    pub asked: Vec<Asked>,
    /// `usage.total_tokens` reported with each answer.
    pub tokens_per_answer: u32,
}

/// The running twin; it stops when dropped.
#[derive(Debug)]
pub struct LlmTwin {
    /// The base URL, ending in `/v1`.
    pub url: String,
    state: Arc<Mutex<TwinState>>,
    _runtime: tokio::runtime::Runtime,
}

impl LlmTwin {
    pub fn start() -> LlmTwin {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("twin runtime");
        let state = Arc::new(Mutex::new(TwinState { tokens_per_answer: 700, ..Default::default() }));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind twin");
        let addr = listener.local_addr().expect("twin addr");
        let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(Arc::clone(&state));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LlmTwin { url: format!("http://{addr}/v1"), state, _runtime: runtime }
    }

    pub fn state(&self) -> MutexGuard<'_, TwinState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the script.
    pub fn script(&self, steps: Vec<Step>) {
        let mut s = self.state();
        s.script = steps.into();
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.state().asked.clone()
    }
}

/// The template narrative a narrate prompt carries.
fn template_in(text: &str) -> String {
    let start = "for reference:\n";
    let Some(i) = text.find(start) else { return String::new() };
    let rest = &text[i + start.len()..];
    rest.split("\n\nWrite the narrative.").next().unwrap_or(rest).trim().to_owned()
}

async fn completions(
    State(state): State<Arc<Mutex<TwinState>>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let text: String = body["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["content"].as_str()).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let (step, tokens) = {
        let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.asked.push(Asked {
            model: model.clone(),
            body: body.clone(),
            text: text.clone(),
            authorization: headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned),
        });
        (s.script.pop_front(), s.tokens_per_answer)
    };
    // The first user message holds the evidence and the template; later ones
    // are the validator's feedback.
    let first_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let say = match step {
        None => return (StatusCode::SERVICE_UNAVAILABLE, Json(error("the script is over"))).into_response(),
        Some(Step::Fail(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, Json(error("planned failure"))).into_response();
        }
        Some(Step::Stall(d)) => {
            tokio::time::sleep(d).await;
            template_in(first_user)
        }
        Some(Step::Say(s)) => s,
        Some(Step::Template(extra)) => format!("{} {extra}", template_in(first_user)).trim().to_owned(),
        Some(Step::Reply(f)) => (f.0)(&body),
        Some(Step::Call(calls)) => {
            let n = body["messages"].as_array().map_or(0, Vec::len);
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({"id": format!("call_{n}_{i}"), "type": "function",
                           "function": {"name": name, "arguments": args.to_string()}})
                })
                .collect();
            let message = json!({"role": "assistant", "content": null, "tool_calls": calls});
            return completion(&model, message, "tool_calls", tokens);
        }
    };
    completion(&model, json!({"role": "assistant", "content": say}), "stop", tokens)
}

/// A chat completion as the API answers one.
fn completion(model: &str, message: Value, finish: &str, tokens: u32) -> Response {
    Json(json!({
        "id": "chatcmpl-twin",
        "object": "chat.completion",
        "created": 1_764_000_000u32,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": tokens / 2, "completion_tokens": tokens - tokens / 2, "total_tokens": tokens}
    }))
    .into_response()
}

fn error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})
}
