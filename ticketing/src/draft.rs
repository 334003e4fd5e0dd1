//! A finding becomes a ticket draft: a title a person would write, a Markdown
//! body with the evidence, labels and a priority. Every string that came from
//! spans is redacted, then escaped (see [`crate::markdown`]).

use andon_model::format::{count, ms, pct};
use andon_model::{Finding, Incident, NarrativeSource, Priority, Severity, Tenant, TicketOpening};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::Settings;
use crate::markdown::{cell_code, code, fenced, sentence, text, title};
use crate::redact::Redactor;

/// GitHub refuses longer titles; shorter ones read better in a list.
const TITLE_MAX: usize = 120;
/// GitHub's limit on a label's length.
const LABEL_MAX: usize = 50;

/// The label every Andon ticket carries; the outbox finds its own issues by it.
pub const ANDON_LABEL: &str = "andon";

/// What a finding turns into before anyone has looked at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub ticket_id: String,
    pub fingerprint: String,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub priority: Priority,
    pub severity: Severity,
    /// The opening paragraph's source, when a model was asked to write it.
    pub opening: Option<TicketOpening>,
}

/// The ticket id of a fingerprint: one ticket per problem per tenant, for good.
pub fn ticket_id(tenant: &Tenant, fingerprint: &str) -> String {
    format!("tk-{}", andon_model::finding::stable_id(&[tenant.as_str(), fingerprint]))
}

/// The first line of every body Andon posts: how the outbox recognises an
/// issue it created, after a timeout or a lost database. Only a first line
/// counts, so text planted further down cannot pose as one.
pub fn marker(tenant: &Tenant, fingerprint: &str, ticket_id: &str) -> String {
    format!("<!-- andon:fingerprint={fingerprint} tenant={} ticket={ticket_id} -->", tenant.as_str())
}

/// The first line of a comment, keyed by its outbox delivery.
pub fn comment_marker(delivery: i64, ticket_id: &str) -> String {
    format!("<!-- andon:comment={delivery} ticket={ticket_id} -->")
}

/// What a marker line says, if `body` starts with one.
pub fn parse_marker(body: &str) -> Option<(String, String, String)> {
    let line = body.lines().next()?.trim();
    let inner = line.strip_prefix("<!-- andon:")?.strip_suffix("-->")?.trim();
    let mut fp = None;
    let mut tenant = None;
    let mut ticket = None;
    for part in inner.split_whitespace() {
        match part.split_once('=') {
            Some(("fingerprint", v)) => fp = Some(v.to_owned()),
            Some(("tenant", v)) => tenant = Some(v.to_owned()),
            Some(("ticket", v)) => ticket = Some(v.to_owned()),
            _ => {}
        }
    }
    Some((fp?, tenant?, ticket?))
}

/// The kind in words, as its detector wrote it.
fn kind_words(f: &Finding) -> String {
    if f.wording.kind.is_empty() { f.kind.as_str().replace('_', " ") } else { f.wording.kind.clone() }
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Drafts from findings, with one set of settings and one redactor.
#[derive(Debug, Clone)]
pub struct Drafter {
    settings: Settings,
    redactor: Redactor,
}

impl Drafter {
    pub fn new(settings: Settings) -> Self {
        let redactor = Redactor::new(&settings.redact_attributes);
        Self { settings, redactor }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn r(&self, s: &str) -> String {
        self.redactor.text(s).into_owned()
    }

    /// `os.type=android`, masked when the key is on the deny-list.
    fn segment_plain(&self, f: &Finding) -> Vec<(String, String)> {
        f.segment.iter().map(|(k, v)| (self.r(k), self.redactor.attribute(k, &value_str(v)).into_owned())).collect()
    }

    pub fn title(&self, f: &Finding) -> String {
        let op = self.r(&f.operation);
        let svc = self.r(&f.service);
        let seg: Vec<String> = self.segment_plain(f).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let seg = if seg.is_empty() { String::new() } else { format!(" for {}", seg.join(", ")) };
        // The detector's title, with the names put in after redaction.
        let t = if f.wording.title.is_empty() {
            format!("{} on {op} in {svc}{seg}", kind_words(f))
        } else {
            f.wording.title_for(&svc, &op, &seg)
        };
        title(&t, TITLE_MAX)
    }

    pub fn labels(&self, f: &Finding, priority: Priority) -> Vec<String> {
        let mut labels = vec![ANDON_LABEL.to_owned()];
        labels.extend(self.settings.labels.iter().cloned());
        labels.push(format!("kind:{}", f.kind.as_str()));
        labels.push(label("service:", &self.r(&f.service)));
        labels.push(format!("severity:{}", f.severity.as_str()));
        labels.push(priority.as_str().to_owned());
        labels.dedup();
        labels
    }

    /// The evidence table: every number of the baseline and current windows.
    fn table(&self, f: &Finding) -> String {
        let keys: std::collections::BTreeSet<&String> = f.baseline.keys().chain(f.current.keys()).collect();
        let mut out = String::from("| | baseline | current | change |\n|---|---:|---:|---:|\n");
        for k in keys {
            let (b, c) = (f.baseline.get(k), f.current.get(k));
            let fmt = |v: Option<&Value>| match v {
                None | Some(Value::Null) => "–".to_owned(),
                Some(Value::Number(n)) => number(k, n.as_f64().unwrap_or(0.0), n.is_u64() || n.is_i64()),
                Some(other) => cell_code(&self.r(&value_str(other))),
            };
            let change = match (b.and_then(Value::as_f64), c.and_then(Value::as_f64)) {
                (Some(b), Some(c)) if is_ms(k) && b > 0.0 => format!("×{:.1}", c / b),
                (Some(b), Some(c)) if is_share(k) => format!("{:+.1} pts", (c - b) * 100.0),
                _ => String::new(),
            };
            out.push_str(&format!("| {} | {} | {} | {change} |\n", row_name(k), fmt(b), fmt(c)));
        }
        out
    }

    /// The Markdown body of a finding's ticket. It opens with the paragraph
    /// a model wrote and the validator accepted, if any, else with the
    /// detector's summary.
    pub fn body(
        &self,
        tenant: &Tenant,
        ticket_id: &str,
        f: &Finding,
        priority: Priority,
        opening: Option<&TicketOpening>,
    ) -> String {
        let mut b = String::new();
        b.push_str(&marker(tenant, &f.fingerprint, ticket_id));
        b.push_str("\n\n");
        let first = match opening {
            Some(o) if o.narrative_source == NarrativeSource::Llm => &o.text,
            _ => &f.summary,
        };
        b.push_str(&sentence(&self.r(first)));
        b.push_str("\n\n");
        b.push_str(&self.table(f));
        b.push('\n');
        let mut facts: Vec<(&str, String)> = vec![
            ("Kind", text(&kind_words(f))),
            ("Where", format!("{} in {}", code(&self.r(&f.operation)), code(&self.r(&f.service)))),
            (
                "Segment",
                if f.segment.is_empty() {
                    "all traffic".to_owned()
                } else {
                    self.segment_plain(f)
                        .iter()
                        .map(|(k, v)| format!("{} = {}", code(k), code(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "Affected",
                format!(
                    "{} sessions, {} requests in the current window",
                    count(f.affected.sessions),
                    count(f.affected.requests)
                ),
            ),
            ("Statistics", self.statistics(f)),
            (
                "Severity",
                format!("{} · priority {priority} (impact {})", f.severity.as_str(), count(f.impact.round() as u64)),
            ),
            (
                "Windows",
                format!(
                    "current {}, baseline {}",
                    span(f.window.start, f.window.end),
                    span(f.baseline_window.start, f.baseline_window.end)
                ),
            ),
        ];
        if let Some(onset) = f.evidence.onset {
            facts.push(("Onset", onset.format("%Y-%m-%d %H:%M UTC").to_string()));
        }
        if let Some(cause) = &f.evidence.cause {
            let why = f.evidence.details.get("cause_reason").and_then(Value::as_str).map(|w| self.r(w));
            facts.push((
                "Where it starts",
                format!(
                    "{} in {}{}",
                    code(&self.r(&cause.operation)),
                    code(&self.r(&cause.service)),
                    why.map(|w| format!(": {}", sentence(&w))).unwrap_or_default()
                ),
            ));
        }
        if let Some(c) = &f.change {
            let mut s = format!("{} {}", code(&self.r(&c.service)), code(&self.r(&c.version)));
            if let Some(commit) = &c.commit {
                s.push_str(&format!(", commit {}", code(&self.r(commit))));
            }
            if let Some(pr) = c.pr {
                s.push_str(&format!(", {}", text(&format!("PR #{pr}"))));
            }
            if let Some(t) = c.first_seen {
                s.push_str(&format!(", first served {}", t.format("%Y-%m-%d %H:%M UTC")));
            }
            facts.push(("Change", s));
        }
        for (k, v) in facts {
            b.push_str(&format!("- **{k}:** {v}\n"));
        }
        if !f.evidence.linked.is_empty() {
            b.push_str("\n### Linked symptoms\n\n");
            for l in &f.evidence.linked {
                b.push_str(&format!("- {} ({})\n", sentence(&self.r(&l.summary)), sentence(&self.r(&l.why))));
            }
        }
        let extra: Vec<(&String, &Value)> =
            f.evidence.details.iter().filter(|(k, _)| !matches!(k.as_str(), "q_value" | "cause_reason")).collect();
        if !extra.is_empty() {
            b.push_str("\n### More evidence\n\n");
            for (k, v) in extra {
                let v = self.redactor.json(v);
                b.push_str(&format!("- {}: {}\n", text(&self.r(k)), code(&v.to_string())));
            }
        }
        b.push_str(&self.exemplars(tenant, f));
        b.push_str("\n### Reproduce\n\nThe numbers above come from this query; run it with `andon query` or `POST /api/v1/query`:\n\n");
        b.push_str(&fenced("sql", &self.r(&f.evidence.query)));
        b.push_str(&format!(
            "\n\n---\nAndon finding {} · first seen {} · last seen {} · fingerprint {}\n",
            code(&f.id),
            f.first_seen.format("%Y-%m-%d %H:%M UTC"),
            f.last_seen.format("%Y-%m-%d %H:%M UTC"),
            code(&f.fingerprint)
        ));
        b
    }

    fn statistics(&self, f: &Finding) -> String {
        let test = if f.evidence.test.is_empty() { "test".to_owned() } else { text(&self.r(&f.evidence.test)) };
        let q = f.evidence.details.get("q_value").and_then(Value::as_f64);
        // The detector writes the effect from its numbers alone; nothing a
        // client sent is in it.
        let effect = if f.wording.effect.is_empty() {
            format!("{:+.1} percentage points", f.effect * 100.0)
        } else {
            f.wording.effect.clone()
        };
        let ci = f.evidence.effect_ci.map(|c| format!(" (95% CI {:.2}–{:.2})", c[0], c[1])).unwrap_or_default();
        format!(
            "{test}, p = {}{}; effect {effect}{ci}",
            sci(f.p_value),
            q.map(|q| format!(" (q = {} after Benjamini–Hochberg)", sci(q))).unwrap_or_default()
        )
    }

    fn exemplars(&self, tenant: &Tenant, f: &Finding) -> String {
        let ids: Vec<&String> = f
            .evidence
            .exemplar_trace_ids
            .iter()
            .filter(|id| id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()))
            .collect();
        if ids.is_empty() {
            return String::new();
        }
        let mut out = String::from("\n### Exemplar traces\n\n");
        for id in ids {
            let id = id.to_ascii_lowercase();
            if self.settings.trace_url.is_empty() {
                out.push_str(&format!("- {}\n", code(&id)));
            } else {
                let url =
                    self.settings.trace_url.replace("{trace_id}", &id).replace("{tenant}", &percent(tenant.as_str()));
                out.push_str(&format!("- [{}](<{}>)\n", code(&id), url.replace(['<', '>', ' '], "")));
            }
        }
        out
    }

    /// A finding's draft, opening with the detector's summary.
    pub fn draft(&self, tenant: &Tenant, f: &Finding) -> Draft {
        self.draft_with(tenant, f, None)
    }

    /// A finding's draft, opening with `opening` when a model wrote it.
    pub fn draft_with(&self, tenant: &Tenant, f: &Finding, opening: Option<&TicketOpening>) -> Draft {
        let priority = self.settings.priority(f.impact);
        let ticket_id = ticket_id(tenant, &f.fingerprint);
        Draft {
            body: self.body(tenant, &ticket_id, f, priority, opening),
            opening: opening.cloned(),
            ticket_id,
            fingerprint: f.fingerprint.clone(),
            title: self.title(f),
            labels: self.labels(f, priority),
            priority,
            severity: f.severity,
        }
    }

    /// An incident's RCA ticket: the report's Markdown (rendered by the RCA, with
    /// span-supplied values in code spans) behind the marker, redacted like any
    /// finding's body. One ticket per incident.
    pub fn draft_incident(&self, tenant: &Tenant, inc: &Incident, report_md: &str) -> Draft {
        let fingerprint = format!("rca:{}", inc.id);
        let ticket_id = ticket_id(tenant, &fingerprint);
        // Confident analyses of a linked change are the ones to act on first.
        let priority = if inc.change.is_some() && inc.confidence >= 0.7 { Priority::P1 } else { Priority::P2 };
        let mut labels = vec![ANDON_LABEL.to_owned()];
        labels.extend(self.settings.labels.iter().cloned());
        labels.push("kind:rca".to_owned());
        if let Some(sig) = &inc.signature {
            labels.push(label("service:", &self.r(&sig.service)));
        }
        labels.push(priority.as_str().to_owned());
        labels.dedup();
        let mut body = marker(tenant, &fingerprint, &ticket_id);
        body.push_str("\n\n");
        body.push_str(&self.redactor.text(report_md));
        Draft {
            title: title(&format!("RCA: {}", self.r(&inc.title)), 200),
            body,
            ticket_id,
            fingerprint,
            labels,
            priority,
            severity: Severity::High,
            opening: None,
        }
    }

    /// The comment on an existing issue when its finding is seen again.
    pub fn recurrence(&self, tenant: &Tenant, delivery: i64, ticket_id: &str, f: &Finding, reopened: bool) -> String {
        let mut b = comment_marker(delivery, ticket_id);
        b.push_str("\n\n");
        b.push_str(if reopened {
            "**Seen again after this issue was closed, so Andon reopened it.**\n\n"
        } else {
            "**Seen again.**\n\n"
        });
        b.push_str(&sentence(&self.r(&f.summary)));
        b.push_str("\n\n");
        b.push_str(&self.table(f));
        b.push_str(&format!(
            "\n- **Affected:** {} sessions, {} requests in the current window\n- **Statistics:** {}\n- **Window:** {}\n",
            count(f.affected.sessions),
            count(f.affected.requests),
            self.statistics(f),
            span(f.window.start, f.window.end)
        ));
        b.push_str(&self.exemplars(tenant, f));
        b.push_str(&format!("\n---\nAndon finding {}\n", code(&f.id)));
        b
    }
}

fn is_ms(k: &str) -> bool {
    k.ends_with("_ms")
}

fn is_share(k: &str) -> bool {
    k.ends_with("_rate") || k.ends_with("_share") || k == "conversion" || k == "recovered_of_failed"
}

fn row_name(k: &str) -> String {
    let k = k.strip_suffix("_ms").unwrap_or(k);
    text(&k.replace('_', " "))
}

fn number(k: &str, v: f64, integer: bool) -> String {
    if is_ms(k) {
        ms(v)
    } else if is_share(k) {
        pct(v)
    } else if integer {
        count(v as u64)
    } else {
        format!("{v:.2}")
    }
}

/// `1.2e-9`, or `0.0031` for larger values.
fn sci(p: f64) -> String {
    if p == 0.0 {
        "< 1e-300".to_owned()
    } else if p < 1e-3 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn span(start: DateTime<Utc>, end: DateTime<Utc>) -> String {
    if start.date_naive() == end.date_naive() {
        format!("{}–{} UTC", start.format("%Y-%m-%d %H:%M"), end.format("%H:%M"))
    } else {
        format!("{} – {} UTC", start.format("%Y-%m-%d %H:%M"), end.format("%Y-%m-%d %H:%M"))
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `service:checkout`: characters a label can hold, at most 50 of them.
fn label(prefix: &str, value: &str) -> String {
    let v: String =
        value.chars().map(|c| if c.is_ascii_alphanumeric() || "._-/".contains(c) { c } else { '-' }).collect();
    let mut l = format!("{prefix}{v}");
    l.truncate(LABEL_MAX);
    l
}
