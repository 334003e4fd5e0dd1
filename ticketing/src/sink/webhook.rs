//! A generic webhook: each delivery is a JSON POST signed with HMAC-SHA256
//! (`X-Andon-Signature-256: sha256=<hex>`, as GitHub signs its own), carrying
//! a stable `X-Andon-Delivery` id. A webhook cannot be asked what it already
//! has, so delivery is at least once and receivers deduplicate on that id.
//! Every payload passes the redactor whole before it is signed: the draft
//! was redacted already, but a reviewer's note or an edited title was not.

use std::time::Duration;

use andon_model::{ExternalRef, Tenant};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Existing, SinkError, TicketSink};
use crate::db::{ApprovedTicket, PostedTicket};
use crate::redact::Redactor;

#[derive(Debug)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    secret: Option<Vec<u8>>,
    redactor: Redactor,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookSink {
    pub fn new(url: &str, secret: Option<String>, timeout: Duration, redactor: Redactor) -> Result<Self, SinkError> {
        andon_model::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| SinkError::Permanent(format!("building the webhook client: {e}")))?;
        Ok(Self { client, url: url.to_owned(), secret: secret.map(String::into_bytes), redactor })
    }

    async fn send(&self, event: &str, delivery: &str, payload: &Value) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&self.redactor.json(payload)).map_err(|e| SinkError::Permanent(e.to_string()))?;
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-andon-event", event)
            .header("x-andon-delivery", delivery);
        if let Some(secret) = &self.secret {
            req = req.header("x-andon-signature-256", signature(secret, &body));
        }
        let resp = req.body(body).send().await.map_err(|e| SinkError::transient(format!("webhook: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = format!("webhook answered {status}");
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            Err(SinkError::Transient { message, retry_after })
        } else {
            Err(SinkError::Permanent(message))
        }
    }
}

#[async_trait]
impl TicketSink for WebhookSink {
    fn system(&self) -> &'static str {
        "webhook"
    }

    async fn find(&self, _tenant: &Tenant, _fingerprint: &str) -> Result<Option<Existing>, SinkError> {
        Ok(None)
    }

    async fn create(&self, ticket: &ApprovedTicket) -> Result<ExternalRef, SinkError> {
        let t = ticket.ticket();
        let payload = json!({ "event": "ticket.created", "tenant": ticket.tenant().as_str(), "ticket": t });
        self.send("ticket.created", &format!("{}-create", t.id), &payload).await?;
        Ok(ExternalRef { system: "webhook".into(), url: self.url.clone(), number: None })
    }

    async fn has_comment(
        &self,
        _ticket: &PostedTicket,
        _marker: &str,
        _since: DateTime<Utc>,
    ) -> Result<bool, SinkError> {
        Ok(false)
    }

    async fn comment(&self, ticket: &PostedTicket, body: &str) -> Result<(), SinkError> {
        let t = ticket.ticket();
        let delivery = body.lines().next().unwrap_or_default().to_owned();
        let payload = json!({
            "event": "ticket.recurred",
            "tenant": ticket.tenant().as_str(),
            "ticket_id": t.id,
            "fingerprint": t.fingerprint,
            "comment": body,
        });
        let id = format!("{}-{:016x}", t.id, andon_model::finding::fnv1a(delivery.as_bytes()));
        self.send("ticket.recurred", &id, &payload).await
    }

    async fn reopen(&self, _ticket: &PostedTicket) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_githubs_scheme() {
        // The example from GitHub's documentation on validating webhook deliveries.
        assert_eq!(
            signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
