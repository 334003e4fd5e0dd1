//! A JSON-lines file: one line per created ticket or comment. Useful where
//! another tool tails the file, and as the default that needs no credentials.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use andon_model::{ExternalRef, Tenant};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Existing, SinkError, TicketSink};
use crate::db::{ApprovedTicket, PostedTicket};

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn url(&self, line: u64) -> String {
        format!("file://{}#L{line}", self.path.display())
    }

    /// Every line of the file with its number, starting at 1.
    fn lines(&self) -> Result<Vec<(u64, Value)>, SinkError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SinkError::transient(format!("reading {}: {e}", self.path.display()))),
        };
        let mut out = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| SinkError::transient(format!("reading {}: {e}", self.path.display())))?;
            // A line cut short by a crash is skipped, not fatal.
            if let Ok(v) = serde_json::from_str(&line) {
                out.push((i as u64 + 1, v));
            }
        }
        Ok(out)
    }

    /// Appends one line and syncs it; returns its line number.
    fn append(&self, v: &Value) -> Result<u64, SinkError> {
        let io = |e: std::io::Error| SinkError::transient(format!("writing {}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let n = self.lines()?.last().map_or(0, |(n, _)| *n) + 1;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io)?;
        let mut line = serde_json::to_vec(v).map_err(|e| SinkError::Permanent(e.to_string()))?;
        line.push(b'\n');
        f.write_all(&line).map_err(io)?;
        f.sync_data().map_err(io)?;
        Ok(n)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SinkError::transient(e.to_string()))?
}

#[async_trait]
impl TicketSink for FileSink {
    fn system(&self) -> &'static str {
        "file"
    }

    async fn find(&self, tenant: &Tenant, fingerprint: &str) -> Result<Option<Existing>, SinkError> {
        let me = Self { path: self.path.clone() };
        let (tenant, fingerprint) = (tenant.as_str().to_owned(), fingerprint.to_owned());
        blocking(move || {
            Ok(me.lines()?.into_iter().find_map(|(n, v)| {
                let t = v.get("ticket")?;
                let matches = v.get("event")? == "created"
                    && v.get("tenant")? == tenant.as_str()
                    && t.get("fingerprint")? == fingerprint.as_str();
                matches.then(|| Existing {
                    external: ExternalRef { system: "file".into(), url: me.url(n), number: Some(n) },
                    ticket_id: t.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    open: true,
                })
            }))
        })
        .await
    }

    async fn create(&self, ticket: &ApprovedTicket) -> Result<ExternalRef, SinkError> {
        let me = Self { path: self.path.clone() };
        let line = json!({
            "at": Utc::now(),
            "event": "created",
            "tenant": ticket.tenant().as_str(),
            "ticket": ticket.ticket(),
        });
        let n = blocking(move || me.append(&line)).await?;
        Ok(ExternalRef { system: "file".into(), url: self.url(n), number: Some(n) })
    }

    async fn has_comment(
        &self,
        _ticket: &PostedTicket,
        marker: &str,
        _since: DateTime<Utc>,
    ) -> Result<bool, SinkError> {
        let me = Self { path: self.path.clone() };
        let marker = marker.to_owned();
        blocking(move || {
            Ok(me.lines()?.iter().any(|(_, v)| {
                v.get("body").and_then(Value::as_str).is_some_and(|b| b.lines().next() == Some(marker.as_str()))
            }))
        })
        .await
    }

    async fn comment(&self, ticket: &PostedTicket, body: &str) -> Result<(), SinkError> {
        let me = Self { path: self.path.clone() };
        let line = json!({
            "at": Utc::now(),
            "event": "commented",
            "tenant": ticket.tenant().as_str(),
            "ticket_id": ticket.ticket().id,
            "fingerprint": ticket.ticket().fingerprint,
            "issue": ticket.external().number,
            "body": body,
        });
        blocking(move || me.append(&line).map(|_| ())).await
    }

    async fn reopen(&self, ticket: &PostedTicket) -> Result<(), SinkError> {
        let me = Self { path: self.path.clone() };
        let line = json!({
            "at": Utc::now(),
            "event": "reopened",
            "tenant": ticket.tenant().as_str(),
            "ticket_id": ticket.ticket().id,
            "issue": ticket.external().number,
        });
        blocking(move || me.append(&line).map(|_| ())).await
    }
}
