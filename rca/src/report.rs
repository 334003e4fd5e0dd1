//! The RCA report as a person reads it: `report.md` and `report.html`.
//!
//! Operation and service names come from spans, so in Markdown they go into
//! code spans (and cells escape pipes) through `andon_model::markdown`, and in
//! HTML every string is escaped.

use std::fmt::Write;

use andon_model::format::ms;
use andon_model::html::esc;
use andon_model::markdown::{cell_code, code, text};
use andon_model::{Discrepancy, Incident, SuspectCause};

use crate::onset;

fn cause(c: SuspectCause) -> &'static str {
    match c {
        SuspectCause::SelfTime => "own time",
        SuspectCause::Errors => "failures start here",
        SuspectCause::Network => "network hop",
        SuspectCause::Release => "new release",
    }
}

fn discrepancy(d: Discrepancy) -> &'static str {
    match d {
        Discrepancy::ThresholdTooLoose => "threshold too loose",
        Discrepancy::RouteNotExercised => "not exercised",
        Discrepancy::EnvironmentOrPayload => "environment or payload differs",
        Discrepancy::NoSuchGate => "no such gate",
        Discrepancy::Overridden => "failed, shipped anyway",
        Discrepancy::NotApplicable => "not applicable",
    }
}

fn value(metric: &str, v: f64) -> String {
    match metric {
        "error_rate" | onset::NEW_VERSION_SHARE => format!("{:.2}%", v * 100.0),
        _ => ms(v),
    }
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The report in Markdown.
pub fn markdown(inc: &Incident) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {}\n", text(&inc.title));
    let _ = writeln!(
        o,
        "Incident `{}` · {} · opened by {} · confidence {:.2}\n",
        inc.id,
        inc.state.as_str(),
        text(&inc.opened_by),
        inc.confidence
    );
    let _ = writeln!(
        o,
        "Window {} to {}; baseline {} to {}.\n",
        time(inc.window.start),
        time(inc.window.end),
        time(inc.baseline_window.start),
        time(inc.baseline_window.end)
    );
    let _ = writeln!(o, "## What happened\n\n{}\n", text(&inc.narrative));
    if let Some(s) = &inc.signature {
        let _ = writeln!(o, "## Signature\n");
        let _ = writeln!(o, "| kind | service | operation | metric | baseline | incident | onset |");
        let _ = writeln!(o, "|---|---|---|---|---|---|---|");
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            s.kind,
            cell_code(&s.service),
            cell_code(&s.operation),
            s.metric,
            value(&s.metric, s.baseline_value),
            value(&s.metric, s.incident_value),
            s.onset.map(time).unwrap_or_else(|| "not found".to_owned())
        );
    }
    let _ = writeln!(o, "## Suspects\n");
    if inc.suspects.is_empty() {
        let _ = writeln!(o, "No operation changed significantly.\n");
    } else {
        let _ = writeln!(o, "| # | service | operation | cause | score | why |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for (i, s) in inc.suspects.iter().enumerate() {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:.2} | {} |",
                i + 1,
                cell_code(&s.service),
                cell_code(&s.operation),
                cause(s.cause),
                s.score,
                text(&s.reason).replace('|', "\\|")
            );
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## Change\n");
    match &inc.change {
        None => {
            let _ = writeln!(o, "No change of the suspects' services was found near the onset.\n");
        }
        Some(c) => {
            let e = &c.event;
            let _ = writeln!(
                o,
                "- **{} {}**{}",
                code(&e.service),
                code(&e.version),
                if c.inferred { " (seen first in spans)" } else { "" }
            );
            let _ = writeln!(
                o,
                "- deployed {}{}",
                time(e.deployed_at),
                e.environment.as_deref().map(|v| format!(" to {}", code(v))).unwrap_or_default()
            );
            if let Some(commit) = &e.commit {
                let _ = writeln!(
                    o,
                    "- commit {}{}",
                    code(commit),
                    e.repository.as_deref().map(|r| format!(" in {}", code(r))).unwrap_or_default()
                );
            }
            if let Some(pr) = e.pr {
                let _ = writeln!(
                    o,
                    "- PR #\u{2060}{pr}{}",
                    e.title.as_deref().map(|t| format!(": {}", text(t))).unwrap_or_default()
                );
            }
            if let Some(a) = &e.author {
                let _ = writeln!(o, "- author {}", code(a));
            }
            if let Some(p) = &c.previous_version {
                let _ = writeln!(o, "- replaced {}", code(p));
            }
            let _ = writeln!(o, "- confidence {:.2}: {}\n", c.confidence, text(&c.why));
        }
    }
    if !inc.gate_analysis.is_empty() {
        let _ = writeln!(o, "## Gate analysis\n");
        let _ = writeln!(o, "| gate | kind | claimed | production | verdict | what to change |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for g in &inc.gate_analysis {
            let cell = |s: &str| text(s).replace('|', "\\|");
            let _ = writeln!(
                o,
                "| {} | {:?} | {} | {} | {} | {} |",
                cell_code(&g.gate),
                g.kind,
                cell(&g.claimed),
                cell(&g.observed),
                discrepancy(g.discrepancy),
                if g.recommendation.is_empty() { "–".to_owned() } else { cell(&g.recommendation) }
            );
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## Why the gates missed it\n\n{}\n", text(&inc.why_missed));
    let _ = writeln!(o, "## Remediation\n");
    for (i, r) in inc.remediation.iter().enumerate() {
        let _ = writeln!(o, "{}. {}", i + 1, text(r));
    }
    o.push('\n');
    let _ = writeln!(o, "## Similar incidents\n");
    if inc.similar_incidents.is_empty() {
        let _ = writeln!(o, "None on record.\n");
    } else {
        for s in &inc.similar_incidents {
            let _ = writeln!(
                o,
                "- `{}` {} ({}, {}): {}{}",
                s.id,
                text(&s.title),
                time(s.opened_at),
                s.state.as_str(),
                text(&s.matched),
                s.change.as_deref().map(|c| format!("; change {}", text(c))).unwrap_or_default()
            );
        }
        o.push('\n');
    }
    let traces: Vec<&String> = inc.suspects.iter().take(3).flat_map(|s| s.exemplar_trace_ids.iter()).collect();
    if !traces.is_empty() {
        let _ = writeln!(o, "## Exemplar traces\n");
        for t in traces {
            let _ = writeln!(o, "- {}", code(t));
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## How this report was made\n");
    for s in &inc.steps {
        let _ = writeln!(o, "- **{}** ({} ms): {}", s.step, s.took_ms, text(&s.summary));
    }
    let _ = writeln!(o, "\nNarrative: {:?}.", inc.narrative_source);
    if let Some(v) = inc.narrative_validation.as_ref().filter(|v| !v.accepted) {
        if let Some(e) = &v.error {
            let _ = writeln!(o, "\nThe model gave no narrative to use: {}.", text(e));
        }
        if !v.violations.is_empty() {
            let _ = writeln!(o, "\nWhat the model's last draft claimed without support in the evidence:\n");
            for x in &v.violations {
                let _ = writeln!(o, "- \"{}\": {}", text(&x.text), text(&x.reason));
            }
        }
    }
    o
}

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1d232a}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde}\
table{border-collapse:collapse;width:100%;font-size:.9rem}td,th{border:1px solid #dde;padding:.3rem .5rem;text-align:left;vertical-align:top}\
th{background:#f4f5f8}code{background:#f4f5f8;padding:0 .2rem;border-radius:3px}.muted{color:#667}\
.narrative{background:#fff8e6;border-left:4px solid #f0b400;padding:.6rem 1rem}";

/// Where the report's trace and incident ids link to, when it is shown inside
/// the web UI: each prefix is followed by the id.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    pub trace: &'a str,
    pub incident: &'a str,
}

/// The report as a standalone HTML page.
pub fn html(inc: &Incident) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(&inc.title)
    );
    let _ = write!(o, "<h1>{}</h1>", esc(&inc.title));
    o.push_str(&html_body(inc, None));
    o.push_str("</body></html>\n");
    o
}

/// The report's sections as HTML, without the page around them or its title.
/// With `links`, exemplar traces and similar incidents are links.
pub fn html_body(inc: &Incident, links: Option<Links<'_>>) -> String {
    let mut o = String::new();
    let trace = |id: &str| match links {
        Some(l) => format!("<a href=\"{}{}\"><code>{}</code></a>", esc(l.trace), esc(id), esc(id)),
        None => format!("<code>{}</code>", esc(id)),
    };
    let _ = write!(
        o,
        "<p class=\"muted\">Incident <code>{}</code> · {} · opened by {} · confidence {:.2}<br>Window {} to {}; baseline {} to {}</p>",
        esc(&inc.id),
        inc.state.as_str(),
        esc(&inc.opened_by),
        inc.confidence,
        time(inc.window.start),
        time(inc.window.end),
        time(inc.baseline_window.start),
        time(inc.baseline_window.end)
    );
    let _ = write!(o, "<h2>What happened</h2><p class=\"narrative\">{}</p>", esc(&inc.narrative));
    if let Some(s) = &inc.signature {
        let _ = write!(
            o,
            "<h2>Signature</h2><table><tr><th>kind</th><th>service</th><th>operation</th><th>metric</th><th>baseline</th><th>incident</th><th>onset</th></tr>\
             <tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
            s.kind,
            esc(&s.service),
            esc(&s.operation),
            esc(&s.metric),
            value(&s.metric, s.baseline_value),
            value(&s.metric, s.incident_value),
            s.onset.map(time).unwrap_or_else(|| "not found".to_owned())
        );
    }
    let _ = write!(
        o,
        "<h2>Suspects</h2><table><tr><th>#</th><th>service</th><th>operation</th><th>cause</th><th>score</th><th>why</th><th>example traces</th></tr>"
    );
    for (i, s) in inc.suspects.iter().enumerate() {
        let _ = write!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            esc(&s.service),
            esc(&s.operation),
            cause(s.cause),
            s.score,
            esc(&s.reason),
            s.exemplar_trace_ids.iter().take(3).map(|t| trace(t)).collect::<Vec<_>>().join("<br>")
        );
    }
    o.push_str("</table><h2>Change</h2>");
    match &inc.change {
        None => o.push_str("<p>No change of the suspects' services was found near the onset.</p>"),
        Some(c) => {
            let e = &c.event;
            let _ = write!(
                o,
                "<ul><li><b><code>{} {}</code></b>{}</li><li>deployed {}</li>",
                esc(&e.service),
                esc(&e.version),
                if c.inferred { " (seen first in spans)" } else { "" },
                time(e.deployed_at)
            );
            if let Some(commit) = &e.commit {
                let _ = write!(o, "<li>commit <code>{}</code></li>", esc(commit));
            }
            if let Some(pr) = e.pr {
                let _ = write!(
                    o,
                    "<li>PR #{pr}{}</li>",
                    e.title.as_deref().map(|t| format!(": {}", esc(t))).unwrap_or_default()
                );
            }
            if let Some(p) = &c.previous_version {
                let _ = write!(o, "<li>replaced <code>{}</code></li>", esc(p));
            }
            let _ = write!(o, "<li>confidence {:.2}: {}</li></ul>", c.confidence, esc(&c.why));
            if !e.gates.is_empty() {
                o.push_str("<table><tr><th>gate</th><th>kind</th><th>verdict</th><th>what it reported</th></tr>");
                for g in &e.gates {
                    let _ = write!(
                        o,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&g.name),
                        esc(&format!("{:?}", g.kind).to_lowercase()),
                        esc(&format!("{:?}", g.verdict).to_lowercase()),
                        esc(g.summary.as_deref().unwrap_or(""))
                    );
                }
                o.push_str("</table>");
            }
        }
    }
    if !inc.gate_analysis.is_empty() {
        o.push_str("<h2>Gate analysis</h2><table><tr><th>gate</th><th>claimed</th><th>production</th><th>verdict</th><th>what to change</th></tr>");
        for g in &inc.gate_analysis {
            let _ = write!(
                o,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}<br><span class=\"muted\">{}</span></td><td>{}</td></tr>",
                esc(&g.gate),
                esc(&g.claimed),
                esc(&g.observed),
                discrepancy(g.discrepancy),
                esc(&g.explanation),
                esc(&g.recommendation)
            );
        }
        o.push_str("</table>");
    }
    let _ = write!(o, "<h2>Why the gates missed it</h2><p>{}</p><h2>Remediation</h2><ol>", esc(&inc.why_missed));
    for r in &inc.remediation {
        let _ = write!(o, "<li>{}</li>", esc(r));
    }
    o.push_str("</ol><h2>Similar incidents</h2>");
    if inc.similar_incidents.is_empty() {
        o.push_str("<p>None on record.</p>");
    } else {
        o.push_str("<ul>");
        for s in &inc.similar_incidents {
            let _ = write!(
                o,
                "<li>{} {} ({}): {}</li>",
                match links {
                    Some(l) => format!("<a href=\"{}{}\"><code>{}</code></a>", esc(l.incident), esc(&s.id), esc(&s.id)),
                    None => format!("<code>{}</code>", esc(&s.id)),
                },
                esc(&s.title),
                time(s.opened_at),
                esc(&s.matched)
            );
        }
        o.push_str("</ul>");
    }
    o.push_str("<h2>How this report was made</h2><ul>");
    for s in &inc.steps {
        let _ = write!(o, "<li><b>{}</b> ({} ms): {}</li>", esc(&s.step), s.took_ms, esc(&s.summary));
    }
    o.push_str("</ul>");
    if let Some(v) = inc.narrative_validation.as_ref().filter(|v| !v.accepted) {
        if let Some(e) = &v.error {
            let _ = write!(o, "<p>The model gave no narrative to use: {}.</p>", esc(e));
        }
        if !v.violations.is_empty() {
            o.push_str("<p>What the model's last draft claimed without support in the evidence:</p><ul>");
            for x in &v.violations {
                let _ = write!(o, "<li>&ldquo;{}&rdquo;: {}</li>", esc(&x.text), esc(&x.reason));
            }
            o.push_str("</ul>");
        }
    }
    o
}
