//! Models behind an OpenAI-compatible chat-completions endpoint (`[llm]` in
//! `andon.toml`), held to their evidence.
//!
//! [`Llm`] routes each task (`narrate`, `ticket`, `investigate`) to its model,
//! falls back to `fallback_model` when that model fails, times out or the
//! hour's token budget is spent, and redacts every message with the ticket
//! redactor before it leaves. [`LlmNarrator`] writes an incident's narrative
//! with it; [`validate::Evidence`] checks every draft before it is used.

pub mod agent;
pub mod validate;

mod narrator;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use andon_ticketing::redact::Redactor;
use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls, ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestAssistantMessageContent, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent, ChatCompletionRequestUserMessage,
    ChatCompletionTool, ChatCompletionTools, CreateChatCompletionRequest, FunctionCall, FunctionObject,
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
    /// Model turns and tool calls an investigation may take.
    #[serde(default = "default_agent_steps")]
    pub investigation_max_steps: u32,
    /// Tokens one investigation may spend, all its turns together.
    #[serde(default = "default_agent_tokens")]
    pub investigation_max_tokens: u64,
    /// How long one investigation may run.
    #[serde(default = "default_agent_timeout")]
    pub investigation_timeout_secs: u64,
    /// The model per task; a task missing here uses `model`.
    #[serde(default)]
    pub tasks: BTreeMap<String, String>,
}

impl LlmConfig {
    /// The agent's bounds where no `[llm]` sets them.
    pub fn default_agent_limits() -> agent::AgentLimits {
        agent::AgentLimits {
            max_steps: default_agent_steps(),
            max_tokens: default_agent_tokens(),
            timeout: Duration::from_secs(default_agent_timeout()),
            max_attempts: default_attempts(),
        }
    }

    /// The investigation agent's bounds.
    pub fn agent_limits(&self) -> agent::AgentLimits {
        agent::AgentLimits {
            max_steps: self.investigation_max_steps,
            max_tokens: self.investigation_max_tokens,
            timeout: Duration::from_secs(self.investigation_timeout_secs),
            max_attempts: self.max_attempts,
        }
    }
}

fn default_agent_steps() -> u32 {
    12
}
fn default_agent_tokens() -> u64 {
    60_000
}
fn default_agent_timeout() -> u64 {
    300
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
        if self.investigation_max_steps == 0 || self.investigation_max_steps > 100 {
            return Err("llm.investigation_max_steps must be between 1 and 100".into());
        }
        if self.investigation_timeout_secs == 0 || self.investigation_timeout_secs > 3600 {
            return Err("llm.investigation_timeout_secs must be between 1 and 3600".into());
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
    /// The model's turn that asked for tools.
    Calls {
        text: String,
        calls: Vec<ToolCall>,
    },
    /// What a tool returned, for the call with this id.
    Tool {
        call_id: String,
        content: String,
    },
}

impl Message {
    fn text(&self) -> &str {
        match self {
            Message::System(s) | Message::User(s) | Message::Assistant(s) => s,
            Message::Calls { text, .. } => text,
            Message::Tool { content, .. } => content,
        }
    }

    /// Characters sent, the arguments of tool calls included.
    fn chars(&self) -> usize {
        match self {
            Message::Calls { text, calls } => {
                text.len() + calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
            }
            m => m.text().len(),
        }
    }
}

/// A tool the model may call: a function with a JSON Schema for its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: serde_json::Value,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON, as the model wrote it (it may not parse).
    pub arguments: String,
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

/// A model's answer: text, or calls of the tools it was offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub calls: Vec<ToolCall>,
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
        self.chat_with_tools(task, messages, &[], budget).await
    }

    /// [`Llm::chat`], offering `tools`: the reply may be calls instead of text.
    pub async fn chat_with_tools(
        &self,
        task: Task,
        messages: &[Message],
        tools: &[ToolSpec],
        budget: u64,
    ) -> Result<Reply, LlmError> {
        let first = self.model_for(task).to_owned();
        let mut models = vec![first.clone()];
        if let Some(f) = &self.config.fallback_model
            && f != &first
        {
            models.push(f.clone());
        }
        let mut last = LlmError::Empty { model: first };
        for model in models {
            match self.once(&model, messages, tools, budget).await {
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

    async fn once(
        &self,
        model: &str,
        messages: &[Message],
        tools: &[ToolSpec],
        budget: u64,
    ) -> Result<Reply, LlmError> {
        let hour = self.config.max_tokens_per_hour;
        if self.spent_this_hour() >= hour {
            return Err(LlmError::OverHourBudget(hour));
        }
        let prompt_chars: usize = messages.iter().map(Message::chars).sum::<usize>()
            + tools.iter().map(|t| t.description.len() + t.parameters.to_string().len()).sum::<usize>();
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
            tools: (!tools.is_empty()).then(|| {
                tools
                    .iter()
                    .map(|t| {
                        ChatCompletionTools::Function(ChatCompletionTool {
                            function: FunctionObject {
                                name: t.name.to_owned(),
                                description: Some(t.description.to_owned()),
                                parameters: Some(t.parameters.clone()),
                                strict: None,
                            },
                        })
                    })
                    .collect()
            }),
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
        let Some(message) = answer.choices.into_iter().next().map(|c| c.message) else {
            return Err(LlmError::Empty { model: model.to_owned() });
        };
        let calls: Vec<ToolCall> = message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| match c {
                ChatCompletionMessageToolCalls::Function(f) => {
                    Some(ToolCall { id: f.id, name: f.function.name, arguments: f.function.arguments })
                }
                ChatCompletionMessageToolCalls::Custom(_) => None,
            })
            .collect();
        let text = message.content.unwrap_or_default();
        if text.trim().is_empty() && calls.is_empty() {
            return Err(LlmError::Empty { model: model.to_owned() });
        }
        Ok(Reply { text: text.trim().to_owned(), calls, model: model.to_owned(), tokens })
    }

    fn message(&self, m: &Message) -> ChatCompletionRequestMessage {
        let text = match m {
            // A tool's JSON is masked value by value, so it stays JSON.
            Message::Tool { content, .. } => match serde_json::from_str::<serde_json::Value>(content) {
                Ok(v) => serde_json::to_string(&self.redactor.json(&v)).unwrap_or_default(),
                Err(_) => self.redactor.text(content).into_owned(),
            },
            m => self.redactor.text(m.text()).into_owned(),
        };
        match m {
            Message::System(_) => ChatCompletionRequestSystemMessage::from(text).into(),
            Message::User(_) => ChatCompletionRequestUserMessage::from(text).into(),
            Message::Assistant(_) => ChatCompletionRequestAssistantMessage::from(text).into(),
            Message::Calls { calls, .. } => {
                ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
                    content: (!text.is_empty()).then_some(ChatCompletionRequestAssistantMessageContent::Text(text)),
                    tool_calls: Some(
                        calls
                            .iter()
                            .map(|c| {
                                ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                                    id: c.id.clone(),
                                    function: FunctionCall {
                                        name: c.name.clone(),
                                        arguments: self.redactor.text(&c.arguments).into_owned(),
                                    },
                                })
                            })
                            .collect(),
                    ),
                    ..Default::default()
                })
            }
            Message::Tool { call_id, .. } => ChatCompletionRequestMessage::Tool(ChatCompletionRequestToolMessage {
                content: ChatCompletionRequestToolMessageContent::Text(text),
                tool_call_id: call_id.clone(),
            }),
        }
    }

    /// The redactor every message passes through.
    /// `messages` as sent (redacted), for the flight recorder.
    pub fn sent(&self, messages: &[Message]) -> serde_json::Value {
        let redacted: Vec<Message> = messages
            .iter()
            .map(|m| match m {
                Message::System(s) => Message::System(self.redactor.text(s).into_owned()),
                Message::User(s) => Message::User(self.redactor.text(s).into_owned()),
                Message::Assistant(s) => Message::Assistant(self.redactor.text(s).into_owned()),
                Message::Calls { text, calls } => {
                    Message::Calls { text: self.redactor.text(text).into_owned(), calls: calls.clone() }
                }
                Message::Tool { call_id, content } => {
                    Message::Tool { call_id: call_id.clone(), content: self.redactor.text(content).into_owned() }
                }
            })
            .collect();
        messages_json(&redacted)
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }
}

/// Messages as the chat API writes them: `[{role, content}]`.
pub(crate) fn messages_json(messages: &[Message]) -> serde_json::Value {
    use serde_json::json;
    serde_json::Value::Array(
        messages
            .iter()
            .map(|m| match m {
                Message::System(s) => json!({"role": "system", "content": s}),
                Message::User(s) => json!({"role": "user", "content": s}),
                Message::Assistant(s) => json!({"role": "assistant", "content": s}),
                Message::Calls { text, calls } => json!({"role": "assistant", "content": text,
                    "tool_calls": calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments})).collect::<Vec<_>>()}),
                Message::Tool { call_id, content } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
            })
            .collect(),
    )
}
