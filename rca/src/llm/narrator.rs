//! The narrative written by a model, held to its evidence: a draft the
//! validator rejects goes back with the list of its unsupported claims, and
//! after `max_attempts` drafts (or when the model is down, slow or over
//! budget) the template's narrative is used. The report says which, and
//! keeps the validator's verdict.

use std::sync::Arc;

use andon_model::{Incident, NarrativeSource, NarrativeValidation, Violation};
use async_trait::async_trait;

use super::validate::{Evidence, evidence_json};
use super::{Llm, Message, Task};
use crate::RcaError;
use crate::narrate::{Narrative, Narrator, TemplateNarrator};

const RULES: &str = "You write the narrative of an incident report for site reliability engineers: one \
paragraph of 3 to 6 sentences, plain text, no headings or lists. Say what broke, since when, what the \
traces blame, which change it is linked to, and why its gates missed it. Use only the evidence you are \
given: every number, time, version, commit, pull request, trace id, service and operation you write must \
appear in it (you may round a number, or give a change between two of its numbers as a percentage). Name \
as a cause only the suspects or the linked change, as the evidence does; if it links no change, say so and \
blame none. Write services and operations in backticks. Do not speculate about mechanisms the evidence \
does not state.";

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

#[async_trait]
impl Narrator for LlmNarrator {
    async fn narrate(&self, inc: &Incident, services: &[String]) -> Result<Narrative, RcaError> {
        let template = TemplateNarrator.write(inc);
        let evidence = Evidence::of_incident(inc).with_known_services(services.iter().cloned());
        let bundle = self.llm.redactor().json(&evidence_json(inc));
        let bundle = serde_json::to_string_pretty(&bundle).unwrap_or_default();
        let mut messages = vec![
            Message::System(RULES.to_owned()),
            Message::User(format!(
                "The evidence, as JSON:\n{bundle}\n\nA plain account written from it by a template, for \
                 reference:\n{template}\n\nWrite the narrative."
            )),
        ];
        let config = self.llm.config();
        let mut budget = config.max_tokens_per_task;
        let mut attempts = 0;
        let mut violations = Vec::new();
        let mut error = None;
        while attempts < config.max_attempts {
            let reply = match self.llm.chat(Task::Narrate, &messages, budget).await {
                Ok(r) => r,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            };
            attempts += 1;
            budget = budget.saturating_sub(reply.tokens);
            if reply.text.is_empty() {
                error = Some(format!("model {} answered with no text", reply.model));
                break;
            }
            violations = evidence.check(&reply.text);
            tracing::debug!(model = reply.model, attempts, rejected = violations.len(), "narrative drafted");
            if violations.is_empty() {
                return Ok(Narrative {
                    text: reply.text,
                    source: NarrativeSource::Llm,
                    validation: Some(NarrativeValidation { accepted: true, attempts, violations, error: None }),
                });
            }
            messages.push(Message::Assistant(reply.text));
            messages.push(Message::User(feedback(&violations)));
        }
        Ok(Narrative {
            text: template,
            source: NarrativeSource::Template,
            validation: Some(NarrativeValidation { accepted: false, attempts, violations, error }),
        })
    }

    fn checks_claims(&self) -> bool {
        true
    }
}
