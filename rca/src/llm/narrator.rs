//! The narrative written by a model, held to its evidence: a draft the
//! validator rejects goes back with the list of its unsupported claims, and
//! after `max_attempts` drafts (or when the model is down, slow or over
//! budget) the template's narrative is used. The report says which, and
//! keeps the validator's verdict.

use std::sync::Arc;

use andon_model::{Finding, Incident, ModelExchange, NarrativeSource, NarrativeValidation, TicketOpening, Violation};
use async_trait::async_trait;

use super::validate::{Evidence, evidence_json, finding_evidence_json};
use super::{Llm, Message, Task};
use crate::RcaError;
use crate::narrate::{Narrative, Narrator, Opening, TemplateNarrator};

const RULES: &str = "You write the narrative of an incident report for site reliability engineers: one \
paragraph of 3 to 6 sentences, plain text, no headings or lists. Say what broke, since when, what the \
traces blame, which change it is linked to, and why its gates missed it. Use only the evidence you are \
given: every number, time, version, commit, pull request, trace id, service and operation you write must \
appear in it (you may round a number, or give a change between two of its numbers as a percentage). Name \
as a cause only the suspects or the linked change, as the evidence does; if it links no change, say so and \
blame none. Write services and operations in backticks. Do not speculate about mechanisms the evidence \
does not state.";

const TICKET_RULES: &str = "You write the opening paragraph of an issue for the team that owns a \
service: 2 to 4 sentences, plain text, no headings or lists. Say what users are hitting, where (the \
operation, its service and the segment), how much worse it is than the baseline, how many sessions it \
touches, and since when. Use only the finding you are given: every number, time, version, commit, pull \
request, trace id, service and operation you write must appear in it (you may round a number, or give a \
change between two of its numbers as a percentage). Name as a cause only where the finding says the \
trouble starts, or its linked change; otherwise blame nothing. Write services and operations in \
backticks. Do not speculate about mechanisms the finding does not state.";

/// Writes the narrative with a model; see the module docs.
#[derive(Debug)]
pub struct LlmNarrator {
    llm: Arc<Llm>,
}

impl LlmNarrator {
    pub fn new(llm: Arc<Llm>) -> Self {
        Self { llm }
    }
}

/// What [`LlmNarrator::validated`] ends with.
struct Validated {
    text: Option<String>,
    validation: NarrativeValidation,
    exchanges: Vec<ModelExchange>,
}

fn exchange(
    task: Task,
    sent: serde_json::Value,
    model: &str,
    tokens: u64,
    violations: Vec<Violation>,
    error: Option<String>,
) -> ModelExchange {
    ModelExchange {
        task: task.as_str().to_owned(),
        model: model.to_owned(),
        sent,
        reply: String::new(),
        tokens,
        violations,
        error,
    }
}

/// The feedback a rejected draft goes back with.
fn feedback(violations: &[Violation]) -> String {
    let mut out = String::from(
        "The evidence does not support these claims of your narrative. Rewrite it without them, \
         keeping to the evidence:\n",
    );
    for v in violations {
        out.push_str(&format!("- \"{}\": {}\n", v.text, v.reason));
    }
    out
}

impl LlmNarrator {
    /// Asks for drafts until one passes `evidence` (at most `max_attempts`),
    /// each rejected one going back with its violations. The text accepted,
    /// if any, the verdict, and every request with its answer.
    async fn validated(&self, task: Task, mut messages: Vec<Message>, evidence: &Evidence) -> Validated {
        let config = self.llm.config();
        let mut budget = config.max_tokens_per_task;
        let mut attempts = 0;
        let mut violations = Vec::new();
        let mut error = None;
        let mut exchanges = Vec::new();
        while attempts < config.max_attempts {
            let sent = self.llm.sent(&messages);
            let reply = match self.llm.chat(task, &messages, budget).await {
                Ok(r) => r,
                Err(e) => {
                    error = Some(e.to_string());
                    exchanges.push(exchange(task, sent, "", 0, Vec::new(), error.clone()));
                    break;
                }
            };
            attempts += 1;
            budget = budget.saturating_sub(reply.tokens);
            if reply.text.is_empty() {
                error = Some(format!("model {} answered with no text", reply.model));
                exchanges.push(exchange(task, sent, &reply.model, reply.tokens, Vec::new(), error.clone()));
                break;
            }
            violations = evidence.check(&reply.text);
            tracing::debug!(
                task = task.as_str(),
                model = reply.model,
                attempts,
                rejected = violations.len(),
                "drafted"
            );
            let mut ex = exchange(task, sent, &reply.model, reply.tokens, violations.clone(), None);
            ex.reply = reply.text.clone();
            exchanges.push(ex);
            if violations.is_empty() {
                let validation = NarrativeValidation { accepted: true, attempts, violations, error: None };
                return Validated { text: Some(reply.text), validation, exchanges };
            }
            messages.push(Message::Assistant(reply.text));
            messages.push(Message::User(feedback(&violations)));
        }
        let validation = NarrativeValidation { accepted: false, attempts, violations, error };
        Validated { text: None, validation, exchanges }
    }
}

#[async_trait]
impl Narrator for LlmNarrator {
    async fn narrate(&self, inc: &Incident, services: &[String]) -> Result<Narrative, RcaError> {
        let template = TemplateNarrator.write(inc);
        let evidence = Evidence::of_incident(inc).with_known_services(services.iter().cloned());
        let bundle = self.llm.redactor().json(&evidence_json(inc));
        let bundle = serde_json::to_string_pretty(&bundle).unwrap_or_default();
        let messages = vec![
            Message::System(RULES.to_owned()),
            Message::User(format!(
                "The evidence, as JSON:\n{bundle}\n\nA plain account written from it by a template, for \
                 reference:\n{template}\n\nWrite the narrative."
            )),
        ];
        let Validated { text, validation, exchanges } = self.validated(Task::Narrate, messages, &evidence).await;
        let (text, source) = match text {
            Some(text) => (text, NarrativeSource::Llm),
            None => (template, NarrativeSource::Template),
        };
        Ok(Narrative { text, source, validation: Some(validation), exchanges })
    }

    /// The opening of `f`'s ticket. An opening a model wrote for an earlier
    /// draft is kept while the finding's new evidence still supports it (no
    /// model is asked each pass); otherwise the model writes one, held to the
    /// finding like a narrative, and the detector's summary stands in when
    /// every draft is rejected.
    async fn ticket_opening(&self, f: &Finding, previous: Option<&TicketOpening>) -> Option<Opening> {
        let evidence = Evidence::of_finding(f);
        if let Some(p) = previous.filter(|p| p.narrative_source == NarrativeSource::Llm)
            && evidence.check(&p.text).is_empty()
        {
            return Some(Opening { opening: p.clone(), exchanges: Vec::new() });
        }
        let bundle = self.llm.redactor().json(&finding_evidence_json(f));
        let bundle = serde_json::to_string_pretty(&bundle).unwrap_or_default();
        let messages = vec![
            Message::System(TICKET_RULES.to_owned()),
            Message::User(format!(
                "The finding, as JSON:\n{bundle}\n\nIts summary, written by the detector, for reference:\n{}\n\n\
                 Write the opening paragraph of its issue.",
                self.llm.redactor().text(&f.summary)
            )),
        ];
        let Validated { text, validation, exchanges } = self.validated(Task::Ticket, messages, &evidence).await;
        let (text, narrative_source) = match text {
            Some(text) => (text, NarrativeSource::Llm),
            None => (f.summary.clone(), NarrativeSource::Template),
        };
        let opening = TicketOpening { text, narrative_source, narrative_validation: Some(validation) };
        Some(Opening { opening, exchanges })
    }

    fn checks_claims(&self) -> bool {
        true
    }
}
