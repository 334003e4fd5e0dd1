//! Models behind an OpenAI-compatible chat-completions endpoint (`[llm]` in
//! `andon.toml`), held to their evidence.
//!
//! [`Llm`] routes each task (`narrate`, `ticket`, `investigate`) to its model,
//! falls back to `fallback_model` when that model fails, times out or the
//! hour's token budget is spent, and redacts every message with the ticket
//! redactor before it leaves. [`LlmNarrator`] writes an incident's narrative
//! with it; [`validate::Evidence`] checks every draft before it is used.

pub mod validate;

mod narrator;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use andon_ticketing::redact::Redactor;
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequest,
};
use serde::{Deserialize, Serialize};

pub use narrator::LlmNarrator;

/// `[llm]`: where the model is and what it may spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// The endpoint's base URL, up to and including `/v1`.
    pub base_url: String,
    /// The model used where a task names none.
    pub model: String,
    /// The environment variable holding the API key (none is sent when unset).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// How long one request may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Tried when a task's model fails, times out or is over budget.
    #[serde(default)]
    pub fallback_model: Option<String>,
    /// Tokens (prompt and completion) across all tasks in any hour; past it,
    /// templates and no investigations.
    #[serde(default = "default_hour")]
    pub max_tokens_per_hour: u64,
    /// Tokens one task (a narrative with its retries) may spend.
    #[serde(default = "default_task")]
    pub max_tokens_per_task: u64,
    /// Drafts of a narrative the validator may reject before the template is
    /// used (the first draft and its retries).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The model per task; a task missing here uses `model`.
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
}

fn default_key_env() -> String {
    "ANDON_LLM_API_KEY".into()
}
fn default_timeout() -> u64 {
    60
}
fn default_hour() -> u64 {
    200_000
}
fn default_task() -> u64 {
    24_000
}
fn default_attempts() -> u32 {
    3
}

impl LlmConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!("llm.base_url must be an http(s) URL, not {:?}", self.base_url));
        }
        if self.model.trim().is_empty() {
            return Err("llm.model must name a model".into());
        }
        if self.timeout_secs == 0 || self.timeout_secs > 600 {
            return Err("llm.timeout_secs must be between 1 and 600".into());
        }
        if self.max_attempts == 0 || self.max_attempts > 5 {
            return Err("llm.max_attempts must be between 1 and 5".into());
        }
        if let Some(t) = self.tasks.keys().find(|t| Task::parse(t).is_none()) {
            return Err(format!("llm.tasks.{t}: tasks are narrate, ticket and investigate"));
        }
        Ok(())
    }
}

/// What a model is asked to do; each may have its own model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Narrate,
    Ticket,
    Investigate,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Narrate => "narrate",
            Task::Ticket => "ticket",
            Task::Investigate => "investigate",
        }
    }

    fn parse(s: &str) -> Option<Task> {
        [Task::Narrate, Task::Ticket, Task::Investigate].into_iter().find(|t| t.as_str() == s)
    }
}

/// A message of a conversation with a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    System(String),
    User(String),
    Assistant(String),
}

impl Message {
    fn text(&self) -> &str {
        match self {
            Message::System(s) | Message::User(s) | Message::Assistant(s) => s,
        }
    }
}

/// Why a model gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("the hour's token budget ({0} tokens) is spent")]
    OverHourBudget(u64),
    #[error("the task's token budget ({0} tokens) is spent")]
    OverTaskBudget(u64),
    #[error("model {model} timed out after {secs} s")]
    Timeout { model: String, secs: u64 },
    #[error("model {model} failed: {message}")]
    Failed { model: String, message: String },
    #[error("model {model} answered with no text")]
    Empty { model: String },
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub model: String,
    pub tokens: u64,
}

/// The client, its routing and its budget.
pub struct Llm {
    config: LlmConfig,
    client: Client<OpenAIConfig>,
    redactor: Redactor,
    /// Tokens spent, by when, over the last hour.
    spent: Mutex<VecDeque<(Instant, u64)>>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("base_url", &self.config.base_url).field("model", &self.config.model).finish()
    }
}

impl Llm {
    /// The client for `config`, its key read from the variable it names
    /// through `env`, every message redacted by `redactor`.
    pub fn new(config: LlmConfig, redactor: Redactor, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        config.validate()?;
        let mut api = OpenAIConfig::new().with_api_base(config.base_url.trim_end_matches('/'));
        // An empty key sends no credentials worth stealing; local servers
        // (Ollama, llama.cpp) take none.
        api = api.with_api_key(env(&config.api_key_env).unwrap_or_default());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .connect_timeout(Duration::from_secs(config.timeout_secs.min(10)))
            .build()
            .map_err(|e| format!("llm client: {e}"))?;
        let client = Client::build(http, api);
        Ok(Self { config, client, redactor, spent: Mutex::default() })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The model a task goes to first.
    pub fn model_for(&self, task: Task) -> &str {
        self.config.tasks.get(task.as_str()).map(String::as_str).unwrap_or(&self.config.model)
    }

    /// Tokens spent in the last hour.
    pub fn spent_this_hour(&self) -> u64 {
        let mut spent = self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hour = Duration::from_secs(3600);
        while spent.front().is_some_and(|(t, _)| t.elapsed() > hour) {
            spent.pop_front();
        }
        spent.iter().map(|(_, n)| n).sum()
    }

    fn spend(&self, tokens: u64) {
        self.spent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back((Instant::now(), tokens));
    }

    /// Asks the task's model, then the fallback model, for the next message
    /// of `messages`. The client retries a 429 or 5xx answer of one model up
    /// to 3 times (100, 200, 400 ms apart, or as `retry-after` says) before
    /// it counts as failed; a timeout fails at once. Every message is redacted first. `budget` is what the
    /// task may still spend; the reply's tokens count against it and the hour.
    pub async fn chat(&self, task: Task, messages: &[Message], budget: u64) -> Result<Reply, LlmError> {
        let first = self.model_for(task).to_owned();
        let mut models = vec![first.clone()];
        if let Some(f) = &self.config.fallback_model
            && f != &first
        {
            models.push(f.clone());
        }
        let mut last = LlmError::Empty { model: first };
        for model in models {
            match self.once(&model, messages, budget).await {
                Ok(r) => return Ok(r),
                Err(e @ LlmError::OverTaskBudget(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(task = task.as_str(), model, error = %e, "model gave no answer");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn once(&self, model: &str, messages: &[Message], budget: u64) -> Result<Reply, LlmError> {
        let hour = self.config.max_tokens_per_hour;
        if self.spent_this_hour() >= hour {
            return Err(LlmError::OverHourBudget(hour));
        }
        let prompt_chars: usize = messages.iter().map(|m| m.text().len()).sum();
        // About 4 characters a token: a prompt that cannot fit the task's
        // budget is not sent.
        let prompt_tokens = (prompt_chars / 4) as u64;
        if prompt_tokens >= budget {
            return Err(LlmError::OverTaskBudget(self.config.max_tokens_per_task));
        }
        let request = CreateChatCompletionRequest {
            model: model.to_owned(),
            messages: messages.iter().map(|m| self.message(m)).collect(),
            max_completion_tokens: Some((budget - prompt_tokens).min(4096) as u32),
            temperature: Some(0.2),
            ..Default::default()
        };
        let started = Instant::now();
        let answer = self.client.chat().create(request).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let message = e.to_string();
                let timed_out = started.elapsed() >= Duration::from_secs(self.config.timeout_secs)
                    || message.to_ascii_lowercase().contains("timed out");
                return Err(if timed_out {
                    LlmError::Timeout { model: model.to_owned(), secs: self.config.timeout_secs }
                } else {
                    LlmError::Failed { model: model.to_owned(), message }
                });
            }
        };
        let tokens = answer.usage.as_ref().map(|u| u64::from(u.total_tokens)).unwrap_or_else(|| {
            let out: usize = answer.choices.iter().filter_map(|c| c.message.content.as_ref()).map(String::len).sum();
            prompt_tokens + (out / 4) as u64
        });
        self.spend(tokens);
        let text = answer.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default();
        if text.trim().is_empty() {
            return Err(LlmError::Empty { model: model.to_owned() });
        }
        Ok(Reply { text: text.trim().to_owned(), model: model.to_owned(), tokens })
    }

    fn message(&self, m: &Message) -> ChatCompletionRequestMessage {
        let text = self.redactor.text(m.text()).into_owned();
        match m {
            Message::System(_) => ChatCompletionRequestSystemMessage::from(text).into(),
            Message::User(_) => ChatCompletionRequestUserMessage::from(text).into(),
            Message::Assistant(_) => ChatCompletionRequestAssistantMessage::from(text).into(),
        }
    }

    /// The redactor every message passes through.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}
