//! The narrative: one paragraph a person reads first. The default narrator is a
//! deterministic template over the analysis; every number and id in it comes
//! from the incident. A model's narrator ([`crate::llm::LlmNarrator`]) plugs in
//! behind the same trait, and its text must pass the evidence check
//! ([`crate::llm::validate`]) before it is used.

use andon_model::format::ms;
use andon_model::{
    Discrepancy, Finding, FindingKind, Incident, ModelExchange, NarrativeSource, NarrativeValidation, SuspectCause,
    TicketOpening,
};
use async_trait::async_trait;

use crate::RcaError;

/// A narrative and who wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Narrative {
    pub text: String,
    pub source: NarrativeSource,
    /// The validator's verdict on a model's drafts, when a model was asked.
    pub validation: Option<NarrativeValidation>,
    /// Each request to the model and its answer, for the flight recorder.
    pub exchanges: Vec<ModelExchange>,
}

/// A ticket's opening paragraph, with the model requests that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Opening {
    pub opening: TicketOpening,
    /// None when an opening written before was kept.
    pub exchanges: Vec<ModelExchange>,
}

#[async_trait]
pub trait Narrator: Send + Sync {
    /// Writes `incident`'s narrative. `services` are the services the
    /// system ran around the incident, for a narrator whose claims are
    /// checked ([`Narrator::checks_claims`]): naming one the evidence does
    /// not involve is a claim without support.
    async fn narrate(&self, incident: &Incident, services: &[String]) -> Result<Narrative, RcaError>;

    /// The opening paragraph of a finding's ticket, given the one its
    /// pending ticket has now. `None` when this narrator writes none (the
    /// ticket opens with the detector's summary).
    async fn ticket_opening(&self, _f: &Finding, _previous: Option<&TicketOpening>) -> Option<Opening> {
        None
    }

    /// Whether its claims are checked against the services the system runs.
    fn checks_claims(&self) -> bool {
        false
    }
}

/// Writes the narrative from a fixed template. Works offline, and the same
/// analysis always reads the same.
#[derive(Debug, Default, Clone, Copy)]
pub struct TemplateNarrator;

fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

fn list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [a, b] => format!("{a} and {b}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
    }
}

#[async_trait]
impl Narrator for TemplateNarrator {
    async fn narrate(&self, inc: &Incident, _services: &[String]) -> Result<Narrative, RcaError> {
        Ok(Narrative {
            text: self.write(inc),
            source: NarrativeSource::Template,
            validation: None,
            exchanges: Vec::new(),
        })
    }
}

impl TemplateNarrator {
    /// The template's narrative of `inc`.
    pub fn write(&self, inc: &Incident) -> String {
        let Some(sig) = &inc.signature else {
            return format!(
                "Between {} and {} UTC the traces show no operation whose time or failures changed significantly \
                 against the baseline ({} to {} UTC); nothing is blamed.",
                inc.window.start.format("%H:%M"),
                inc.window.end.format("%H:%M"),
                inc.baseline_window.start.format("%H:%M"),
                inc.baseline_window.end.format("%H:%M"),
            );
        };
        let top = inc.suspects.first();
        let mut out = String::new();
        let what = match sig.kind {
            FindingKind::ErrorRateRegression => "error-rate regression",
            k if k == crate::onset::RELEASE => "release",
            _ => "p95 latency regression",
        };
        let onset = sig
            .onset
            .map(|t| format!(" began at {} UTC", t.format("%H:%M")))
            .unwrap_or_else(|| format!(" is seen from {} UTC", inc.window.start.format("%H:%M")));
        out.push_str(&format!("The {what} on `{}` in `{}`{onset}", sig.operation, sig.service));
        if let Some(c) = &inc.change {
            let e = &c.event;
            let mut refs = Vec::new();
            if let Some(commit) = &e.commit {
                refs.push(format!("commit {}", short(commit)));
            }
            if let Some(pr) = e.pr {
                refs.push(format!("PR #{pr}"));
            }
            let refs = if refs.is_empty() { String::new() } else { format!(" ({})", refs.join(", ")) };
            let lead = sig.onset.map(|o| (o - e.deployed_at).num_minutes());
            match lead {
                Some(m) if m >= 1 => out.push_str(&format!(
                    ", {m} minute{} after {} {}{refs} was deployed",
                    if m == 1 { "" } else { "s" },
                    e.service,
                    e.version
                )),
                _ => out.push_str(&format!(", as {} {}{refs} rolled out", e.service, e.version)),
            }
        }
        out.push_str(". ");
        match sig.kind {
            FindingKind::ErrorRateRegression => out.push_str(&format!(
                "{:.1}% of its calls fail, against {:.1}% in the baseline. ",
                sig.incident_value * 100.0,
                sig.baseline_value * 100.0
            )),
            k if k == crate::onset::RELEASE => out.push_str(&format!(
                "{} serves {:.0}% of its requests, against {:.0}% in the baseline, and no operation's time or \
                 failures changed measurably: what the release returns is what changed. ",
                top.and_then(|t| t.version.as_deref()).unwrap_or("The new version"),
                sig.incident_value * 100.0,
                sig.baseline_value * 100.0
            )),
            _ => out.push_str(&format!(
                "Its p95 went from {} to {}{}. ",
                ms(sig.baseline_value),
                ms(sig.incident_value),
                sig.observed_at.as_deref().map(|w| format!(" in {w}")).unwrap_or_default()
            )),
        }
        if let Some(g) = inc
            .gate_analysis
            .iter()
            .find(|g| !matches!(g.discrepancy, Discrepancy::NotApplicable | Discrepancy::NoSuchGate))
        {
            out.push_str(&format!(
                "Its {} gate reported \"{}\"; production shows {}: {}. ",
                g.gate, g.claimed, g.observed, g.explanation
            ));
        } else if let Some(g) = inc.gate_analysis.iter().find(|g| g.discrepancy == Discrepancy::NoSuchGate) {
            out.push_str(&format!("{}. ", capitalize(&g.explanation)));
        }
        if let Some(t) = top {
            if t.cause == SuspectCause::Network {
                out.push_str(&format!("The time is lost on the way to `{}`, not inside it: {}. ", t.service, t.reason));
            }
            let callers: Vec<String> = inc
                .details
                .get("waiting_callers")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str()).map(|s| format!("`{s}`")).collect())
                .unwrap_or_default();
            if !callers.is_empty() && !matches!(t.cause, SuspectCause::Network | SuspectCause::Release) {
                out.push_str(&format!("Callers {} are slow only while waiting on {}.", list(&callers), t.service));
            }
        }
        if inc.change.is_none() {
            out.push_str(&format!(
                " No change of {} was found near the onset; look at its infrastructure and dependencies.",
                sig.service
            ));
        }
        out.trim_end().to_owned()
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}
