//! `andon.toml`: read, overlaid with `ANDON_*` variables and flags, validated once
//! into [`Config`]. Nothing past this module sees raw configuration.
//!
//! Precedence, lowest first: built-in defaults, the file, environment variables
//! (`ANDON_<KEY>` for top-level keys, `ANDON_<SECTION>_<KEY>` for the rest, for
//! example `ANDON_STORAGE_DURABILITY=none`), then command-line flags.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use andon_analysis::AnalysisConfig;
use andon_ingest::{IngestConfig, SpanLimits};
use andon_store::{Durability, QueryLimits, StoreConfig};
use andon_ticketing::TicketingConfig;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub data_dir: PathBuf,
    /// When set, the host of every listening address.
    pub listen: String,
    pub otlp: RawOtlp,
    pub api: RawApi,
    pub storage: RawStorage,
    pub log: RawLog,
    pub analysis: AnalysisConfig,
    pub tickets: TicketingConfig,
    pub rca: andon_rca::RcaConfig,
    pub auth: RawAuth,
    pub tls: RawTls,
    pub runs: RawRuns,
    /// A model behind an OpenAI-compatible endpoint; none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<andon_rca::llm::LlmConfig>,
}

/// `[runs]`: what the flight recorder keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRuns {
    /// Runs older than this are dropped with the inputs and outputs no other
    /// run uses.
    pub retention_days: u64,
    /// A larger recorded input or output keeps only its hash and size (its
    /// step cannot be replayed).
    pub max_blob_bytes: u64,
}

impl Default for RawRuns {
    fn default() -> Self {
        Self { retention_days: 30, max_blob_bytes: 1 << 20 }
    }
}

/// `[tls]`: PEM files that put all three ports on TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// The server's certificate chain, leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// The server's private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// CAs whose client certificates the OTLP ports then require.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

impl RawTls {
    fn files(self) -> anyhow::Result<Option<andon_ingest::listen::TlsFiles>> {
        match (self.cert_file, self.key_file) {
            (None, None) if self.client_ca_file.is_none() => Ok(None),
            (Some(cert_file), Some(key_file)) => {
                Ok(Some(andon_ingest::listen::TlsFiles { cert_file, key_file, client_ca_file: self.client_ca_file }))
            }
            _ => bail!("tls: give both cert_file and key_file (client_ca_file needs them too)"),
        }
    }
}

/// `[[auth.tokens]]`: auth is on as soon as one is configured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub tokens: Vec<RawToken>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawToken {
    /// Who acts: the audit trail and the reviewer of a decision.
    pub name: String,
    /// `ingest`, `read`, `approve` or `admin`.
    pub role: String,
    /// Pins the token to one tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The environment variable that holds the token ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// ... or the hex SHA-256 of the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

impl RawAuth {
    /// The verifier every port shares; token values are read from their
    /// variables here, once, and kept only as digests.
    pub fn verifier(&self) -> anyhow::Result<andon_model::auth::Verifier> {
        use andon_model::auth::{Principal, Role, TokenEntry, Verifier};
        let mut entries = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let name = t.name.trim();
            if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
                bail!("auth.tokens[{i}]: name must be 1 to 100 printable characters");
            }
            let role = Role::parse(&t.role).map_err(|e| anyhow::anyhow!("auth.tokens[{i}] ({name}): {e}"))?;
            let tenant = t
                .tenant
                .as_deref()
                .map(andon_model::Tenant::new)
                .transpose()
                .map_err(|e| anyhow::anyhow!("auth.tokens[{i}] ({name}): tenant: {e}"))?;
            let principal = Principal { name: name.to_owned(), role, tenant };
            let entry = match (&t.token_env, &t.token_sha256) {
                (Some(var), None) => {
                    let value = std::env::var(var).map_err(|_| {
                        anyhow::anyhow!("auth.tokens[{i}] ({name}): the variable {var} that holds its token is not set")
                    })?;
                    TokenEntry::from_secret(principal, &value)
                }
                (None, Some(hex)) => TokenEntry::from_sha256(principal, hex),
                _ => bail!("auth.tokens[{i}] ({name}): give exactly one of token_env and token_sha256"),
            };
            entries.push(entry.map_err(|e| anyhow::anyhow!("auth.tokens[{i}]: {e}"))?);
        }
        Verifier::new(entries).map_err(|e| anyhow::anyhow!("auth.tokens: {e}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOtlp {
    pub grpc_addr: String,
    pub http_addr: String,
    pub max_request_bytes: u64,
    pub max_grpc_message_bytes: u64,
    pub max_inflight_bytes: u64,
    /// Spans one export request may carry.
    pub max_request_spans: u64,
    /// Reject spans older than this many seconds; 0 accepts any age.
    pub max_span_age_secs: u64,
    /// Reject spans starting more than this many seconds ahead; 0 accepts any.
    pub max_span_future_secs: u64,
    pub retry_after_secs: u64,
    /// How long an export waits for the store's buffer to have room before
    /// it is refused as overloaded; 0 refuses at once.
    pub overload_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    pub addr: String,
    pub query_max_rows: u64,
    pub query_timeout_secs: u64,
    pub query_threads: u64,
    /// Bytes of result a query returns at most (cut like rows past it).
    pub query_max_response_bytes: u64,
    /// Memory all running queries share, detection's included; past it
    /// queries spill to disk or fail cleanly.
    pub query_memory_bytes: u64,
    /// Interactive queries running at once.
    pub query_max_concurrent: u64,
    /// Disk the spill files of running queries may take.
    pub query_spill_bytes: u64,
    /// Host names the API port answers to besides IP addresses and
    /// `localhost` (a `Host` it does not know is refused: DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Incidents, and separately analyses, each tenant may start through the
    /// API per minute (429 past it); 0 is no limit.
    pub opened_per_minute: u32,
    /// The longest range `/api/v1/analyze` covers, baseline included.
    pub max_analyze_range_hours: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// `fsync` (acknowledge after the WAL is synced) or `none`.
    pub durability: String,
    pub flush_interval_secs: u64,
    pub flush_bytes: u64,
    pub max_buffer_bytes: u64,
    /// Keep segments this many hours; 0 keeps them forever.
    pub retention_hours: u64,
    pub dedup_window_secs: u64,
    pub dedup_max_keys: u64,
    /// Merge an hour's small segments once there are this many.
    pub compact_min_segments: u64,
    /// The most segments one merge reads at once (its memory grows with them).
    pub compact_max_segments: u64,
    /// Segments below this size count as small.
    pub compact_small_bytes: u64,
    /// Keep `span_metrics` and `sessions` at ingest for detection to read;
    /// off, every pass reads raw spans.
    pub rollups: bool,
    /// How often a flush also writes the open sessions.
    pub sessions_snapshot_secs: u64,
    /// The most server calls open sessions hold (about 100 bytes each, estimated); past
    /// it the least recently active are finalized before their timeout.
    pub max_open_session_calls: u64,
    /// Keep segments in S3-compatible storage, `s3://bucket/prefix`, with
    /// credentials, region and endpoint from the `AWS_*` environment
    /// variables. Empty: under `data_dir`.
    pub object_store: String,
    /// With `object_store`, the most bytes of segments cached on local disk.
    pub object_cache_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, for example `info` or `andon_store=debug,info`.
    pub level: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("andon-data"),
            listen: String::new(),
            otlp: RawOtlp::default(),
            api: RawApi::default(),
            storage: RawStorage::default(),
            log: RawLog::default(),
            analysis: AnalysisConfig::default(),
            tickets: TicketingConfig::default(),
            rca: andon_rca::RcaConfig::default(),
            auth: RawAuth::default(),
            tls: RawTls::default(),
            runs: RawRuns::default(),
            llm: None,
        }
    }
}

impl Default for RawOtlp {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:4317".into(),
            http_addr: "127.0.0.1:4318".into(),
            max_request_bytes: 20 << 20,
            max_grpc_message_bytes: 4 << 20,
            max_inflight_bytes: 64 << 20,
            max_request_spans: 100_000,
            max_span_age_secs: 0,
            max_span_future_secs: andon_ingest::convert::DEFAULT_MAX_FUTURE_SECS,
            retry_after_secs: 2,
            overload_wait_ms: 2_000,
        }
    }
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:4380".into(),
            query_max_rows: 10_000,
            query_timeout_secs: 30,
            query_threads: 2,
            query_max_response_bytes: 32 << 20,
            query_memory_bytes: 1 << 30,
            query_max_concurrent: 4,
            query_spill_bytes: 4 << 30,
            allowed_hosts: Vec::new(),
            opened_per_minute: 30,
            max_analyze_range_hours: 7 * 24,
        }
    }
}

impl Default for RawStorage {
    fn default() -> Self {
        Self {
            durability: "fsync".into(),
            flush_interval_secs: 60,
            flush_bytes: 16 << 20,
            max_buffer_bytes: 64 << 20,
            retention_hours: 24 * 7,
            dedup_window_secs: 600,
            dedup_max_keys: 4_000_000,
            compact_min_segments: 8,
            compact_max_segments: 16,
            compact_small_bytes: 32 << 20,
            rollups: true,
            sessions_snapshot_secs: 30,
            max_open_session_calls: andon_store::MAX_OPEN_SESSION_CALLS as u64,
            object_store: String::new(),
            object_cache_bytes: 1 << 30,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self { format: "text".into(), level: "info".into() }
    }
}

/// Flags of `andon serve` that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub otlp_grpc_addr: Option<String>,
    pub otlp_http_addr: Option<String>,
    pub api_addr: Option<String>,
    pub listen: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub ingest: IngestConfig,
    pub store: StoreConfig,
    pub query: QueryLimits,
    pub query_threads: usize,
    pub log_json: bool,
    pub log_level: String,
    pub analysis: AnalysisConfig,
    pub tickets: andon_ticketing::Settings,
    pub rca: andon_rca::RcaConfig,
    pub llm: Option<andon_rca::llm::LlmConfig>,
    /// What the flight recorder keeps.
    pub runs: andon_analysis::recorder::RecorderLimits,
    /// Who may call, on every port (the same as `ingest.auth`).
    pub auth: std::sync::Arc<andon_model::auth::Verifier>,
    pub allowed_hosts: Vec<String>,
    pub opened_per_minute: u32,
    pub max_analyze_range_hours: u64,
    /// TLS on all three ports, when configured.
    pub tls: Option<andon_ingest::listen::TlsFiles>,
}

/// Applies `ANDON_*` variables from `vars` to the TOML table `doc`.
fn apply_env(doc: &mut toml::Table, defaults: &toml::Table, vars: &[(String, String)]) -> anyhow::Result<()> {
    let parse = |raw: &str| -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
    };
    for (key, default) in defaults {
        match default {
            toml::Value::Table(section) => {
                for (sub, sub_default) in section {
                    let name = format!("ANDON_{}_{}", key.to_uppercase(), sub.to_uppercase());
                    if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                        let value = match sub_default {
                            toml::Value::String(_) => toml::Value::String(v.clone()),
                            _ => parse(v),
                        };
                        let entry = doc.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                        let Some(table) = entry.as_table_mut() else { bail!("{key} must be a table") };
                        table.insert(sub.clone(), value);
                    }
                }
            }
            _ => {
                let name = format!("ANDON_{}", key.to_uppercase());
                if let Some((_, v)) = vars.iter().find(|(k, _)| *k == name) {
                    doc.insert(key.clone(), toml::Value::String(v.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Every key of `[llm]`, with a value of its type: what `ANDON_LLM_*` may set.
fn llm_keys() -> andon_rca::llm::LlmConfig {
    andon_rca::llm::LlmConfig {
        base_url: String::new(),
        model: String::new(),
        api_key_env: String::new(),
        timeout_secs: 0,
        fallback_model: Some(String::new()),
        max_tokens_per_hour: 0,
        max_tokens_per_task: 0,
        max_attempts: 0,
        investigation_max_steps: 0,
        investigation_max_tokens: 0,
        investigation_timeout_secs: 0,
        tasks: Default::default(),
    }
}

/// Reads the file (if any) and the environment into a raw config.
pub fn load(path: Option<&Path>, vars: &[(String, String)]) -> anyhow::Result<RawConfig> {
    let mut doc = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
            toml::from_str::<toml::Table>(&text).with_context(|| format!("parsing config {}", p.display()))?
        }
        None => toml::Table::new(),
    };
    let mut defaults = toml::Table::try_from(RawConfig::default())?;
    // `[llm]` is absent by default; its keys are still settable as `ANDON_LLM_*`.
    defaults.insert("llm".into(), toml::Value::Table(toml::Table::try_from(llm_keys())?));
    apply_env(&mut doc, &defaults, vars)?;
    let raw: RawConfig = doc.try_into().with_context(|| match path {
        Some(p) => format!("invalid config {} (or ANDON_* variable)", p.display()),
        None => "invalid ANDON_* variable".to_owned(),
    })?;
    Ok(raw)
}

fn addr(field: &str, value: &str, listen: Option<IpAddr>) -> anyhow::Result<SocketAddr> {
    let mut a: SocketAddr = value.parse().with_context(|| format!("{field}: {value:?} is not HOST:PORT"))?;
    if let Some(ip) = listen {
        a.set_ip(ip);
    }
    Ok(a)
}

fn size(field: &str, v: u64, min: u64) -> anyhow::Result<usize> {
    if v < min {
        bail!("{field} must be at least {min}");
    }
    usize::try_from(v).with_context(|| format!("{field} is too large"))
}

impl RawConfig {
    pub fn apply(&mut self, o: Overrides) {
        if let Some(d) = o.data_dir {
            self.data_dir = d;
        }
        if let Some(a) = o.otlp_grpc_addr {
            self.otlp.grpc_addr = a;
        }
        if let Some(a) = o.otlp_http_addr {
            self.otlp.http_addr = a;
        }
        if let Some(a) = o.api_addr {
            self.api.addr = a;
        }
        if let Some(l) = o.listen {
            self.listen = l;
        }
    }

    pub fn validate(self) -> anyhow::Result<Config> {
        let listen = match self.listen.trim() {
            "" => None,
            ip => Some(ip.parse::<IpAddr>().with_context(|| format!("listen: {ip:?} is not an IP address"))?),
        };
        let durability = match self.storage.durability.as_str() {
            "fsync" => Durability::Fsync,
            "none" => Durability::None,
            other => bail!("storage.durability must be \"fsync\" or \"none\", not {other:?}"),
        };
        let log_json = match self.log.format.as_str() {
            "text" => false,
            "json" => true,
            other => bail!("log.format must be \"text\" or \"json\", not {other:?}"),
        };
        let secs = |s: u64| (s > 0).then(|| s.saturating_mul(1_000_000_000));
        let auth = std::sync::Arc::new(self.auth.verifier()?);
        let ingest = IngestConfig {
            max_request_bytes: size("otlp.max_request_bytes", self.otlp.max_request_bytes, 1024)?,
            max_grpc_message_bytes: size("otlp.max_grpc_message_bytes", self.otlp.max_grpc_message_bytes, 1024)?,
            max_inflight_bytes: size("otlp.max_inflight_bytes", self.otlp.max_inflight_bytes, 1024)?,
            max_request_spans: size("otlp.max_request_spans", self.otlp.max_request_spans, 1)?,
            span_limits: SpanLimits {
                // Spans retention would delete at once are refused, not stored and
                // silently deleted a minute later (an import of old history).
                max_age_ns: match (
                    secs(self.otlp.max_span_age_secs),
                    secs(self.storage.retention_hours.saturating_mul(3_600)),
                ) {
                    (Some(age), Some(kept)) => Some(age.min(kept)),
                    (age, kept) => age.or(kept),
                },
                max_future_ns: secs(self.otlp.max_span_future_secs),
            },
            retry_after: Duration::from_secs(self.otlp.retry_after_secs.max(1)),
            overload_wait: Duration::from_millis(self.otlp.overload_wait_ms),
            auth: std::sync::Arc::clone(&auth),
        };
        if self.storage.flush_interval_secs == 0 {
            bail!("storage.flush_interval_secs must be at least 1");
        }
        let tickets = self.tickets.validate(&self.data_dir).map_err(anyhow::Error::msg)?;
        self.rca.validate().map_err(anyhow::Error::msg)?;
        if let Some(l) = &self.llm {
            l.validate().map_err(anyhow::Error::msg)?;
        }
        let object_store = match self.storage.object_store.trim() {
            "" => None,
            url => {
                andon_store::parse_s3_url(url).map_err(|e| anyhow::anyhow!("storage.object_store: {e}"))?;
                Some(url.to_owned())
            }
        };
        let store = StoreConfig {
            object_store,
            object_cache_bytes: self.storage.object_cache_bytes,
            data_dir: self.data_dir,
            durability,
            flush_interval: Duration::from_secs(self.storage.flush_interval_secs),
            flush_bytes: size("storage.flush_bytes", self.storage.flush_bytes, 1024)?,
            max_buffer_bytes: size("storage.max_buffer_bytes", self.storage.max_buffer_bytes, 1024)?,
            retention: (self.storage.retention_hours > 0)
                .then(|| Duration::from_secs(self.storage.retention_hours.saturating_mul(3_600))),
            dedup_window: Duration::from_secs(self.storage.dedup_window_secs.max(1)),
            dedup_max_keys: size("storage.dedup_max_keys", self.storage.dedup_max_keys, 1)?,
            compact_min_segments: size("storage.compact_min_segments", self.storage.compact_min_segments, 2)?,
            compact_max_segments: size("storage.compact_max_segments", self.storage.compact_max_segments, 2)?,
            compact_small_bytes: self.storage.compact_small_bytes,
            rollups: self.storage.rollups,
            sessions_snapshot_interval: Duration::from_secs(self.storage.sessions_snapshot_secs),
            rollup_segments: self.analysis.segments.clone(),
            session_timeout_secs: self.analysis.session_timeout_secs,
            retry_interval_secs: self.analysis.retry_interval_secs,
            max_open_session_calls: size("storage.max_open_session_calls", self.storage.max_open_session_calls, 1)?,
            reconvert: Some(std::sync::Arc::new(andon_ingest::OtlpReconvert)),
        };
        if store.max_buffer_bytes < store.flush_bytes {
            bail!("storage.max_buffer_bytes must be at least storage.flush_bytes");
        }
        if store.compact_max_segments < store.compact_min_segments {
            bail!("storage.compact_max_segments must be at least storage.compact_min_segments");
        }
        Ok(Config {
            grpc_addr: addr("otlp.grpc_addr", &self.otlp.grpc_addr, listen)?,
            http_addr: addr("otlp.http_addr", &self.otlp.http_addr, listen)?,
            api_addr: addr("api.addr", &self.api.addr, listen)?,
            ingest,
            store,
            query: QueryLimits {
                max_rows: size("api.query_max_rows", self.api.query_max_rows, 1)?,
                max_response_bytes: size("api.query_max_response_bytes", self.api.query_max_response_bytes, 1024)?,
                timeout: Duration::from_secs(self.api.query_timeout_secs.max(1)),
                memory_bytes: size("api.query_memory_bytes", self.api.query_memory_bytes, 16 << 20)?,
                max_concurrent: size("api.query_max_concurrent", self.api.query_max_concurrent, 1)?,
                spill_bytes: self.api.query_spill_bytes,
            },
            query_threads: size("api.query_threads", self.api.query_threads, 1)?,
            log_json,
            log_level: self.log.level,
            analysis: {
                self.analysis.validate().map_err(anyhow::Error::msg)?;
                self.analysis
            },
            tickets,
            rca: self.rca,
            llm: self.llm,
            runs: {
                if self.runs.retention_days == 0 {
                    bail!("runs.retention_days must be at least 1");
                }
                andon_analysis::recorder::RecorderLimits {
                    retention: chrono::Duration::days(self.runs.retention_days.min(36_500) as i64),
                    max_blob_bytes: size("runs.max_blob_bytes", self.runs.max_blob_bytes, 1024)?,
                }
            },
            auth,
            allowed_hosts: self.api.allowed_hosts,
            tls: self.tls.files()?,
            opened_per_minute: self.api.opened_per_minute,
            max_analyze_range_hours: {
                if self.api.max_analyze_range_hours == 0 {
                    bail!("api.max_analyze_range_hours must be at least 1");
                }
                self.api.max_analyze_range_hours
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("andon.toml");
        std::fs::write(&path, "data_dir = \"/from/file\"\n[storage]\ndurability = \"none\"\nflush_bytes = 4096\n")
            .unwrap();
        let mut raw =
            load(Some(&path), &vars(&[("ANDON_STORAGE_FLUSH_BYTES", "8192"), ("ANDON_API_ADDR", "127.0.0.1:0")]))
                .unwrap();
        assert_eq!(raw.storage.durability, "none");
        assert_eq!(raw.storage.flush_bytes, 8192);
        raw.apply(Overrides {
            data_dir: Some("/from/flag".into()),
            listen: Some("0.0.0.0".into()),
            ..Overrides::default()
        });
        let cfg = raw.validate().unwrap();
        assert_eq!(cfg.store.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(cfg.store.durability, Durability::None);
        assert_eq!(cfg.api_addr.to_string(), "0.0.0.0:0");
        assert_eq!(cfg.grpc_addr.to_string(), "0.0.0.0:4317");
    }

    #[test]
    fn spans_older_than_retention_are_refused_at_ingest() {
        let hour = 3_600 * 1_000_000_000u64;
        let cfg = |vars_: &[(&str, &str)]| load(None, &vars(vars_)).unwrap().validate().unwrap().ingest.span_limits;
        assert_eq!(cfg(&[("ANDON_STORAGE_RETENTION_HOURS", "24")]).max_age_ns, Some(24 * hour));
        let both = [("ANDON_STORAGE_RETENTION_HOURS", "24"), ("ANDON_OTLP_MAX_SPAN_AGE_SECS", "3600")];
        assert_eq!(cfg(&both).max_age_ns, Some(hour));
        assert_eq!(cfg(&[("ANDON_STORAGE_RETENTION_HOURS", "0")]).max_age_ns, None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("andon.toml");
        std::fs::write(&path, "[storage]\nflush_byts = 1\n").unwrap();
        let err = format!("{:#}", load(Some(&path), &[]).unwrap_err());
        assert!(err.contains("flush_byts"), "{err}");
        let mut raw = RawConfig::default();
        raw.storage.durability = "sometimes".into();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("storage.durability"), "{err}");
        let mut raw = RawConfig::default();
        raw.storage.object_store = "gs://spans".into();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("storage.object_store") && err.contains("s3://"), "{err}");
        let s3 = load(None, &vars(&[("ANDON_STORAGE_OBJECT_STORE", "s3://andon-spans/prod")])).unwrap();
        assert_eq!(s3.validate().unwrap().store.object_store.as_deref(), Some("s3://andon-spans/prod"));
        let err = load(None, &vars(&[("ANDON_OTLP_MAX_REQUEST_BYTES", "lots")])).unwrap_err();
        assert!(format!("{err:#}").contains("max_request_bytes"), "{err:#}");
        // A merge must be able to take the run that triggers it.
        let few = vars(&[("ANDON_STORAGE_COMPACT_MIN_SEGMENTS", "16"), ("ANDON_STORAGE_COMPACT_MAX_SEGMENTS", "4")]);
        let err = load(None, &few).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("storage.compact_max_segments"), "{err}");
        let ok = vars(&[("ANDON_STORAGE_COMPACT_MAX_SEGMENTS", "32")]);
        assert_eq!(load(None, &ok).unwrap().validate().unwrap().store.compact_max_segments, 32);
    }
    #[test]
    fn the_runs_section_bounds_the_flight_recorder() {
        let runs = load(None, &[]).unwrap().validate().unwrap().runs;
        assert_eq!((runs.retention, runs.max_blob_bytes), (chrono::Duration::days(30), 1 << 20));
        let runs = load(None, &vars(&[("ANDON_RUNS_RETENTION_DAYS", "7")])).unwrap().validate().unwrap().runs;
        assert_eq!(runs.retention, chrono::Duration::days(7));
        let err = load(None, &vars(&[("ANDON_RUNS_RETENTION_DAYS", "0")])).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("runs.retention_days"), "{err}");
        let err = load(None, &vars(&[("ANDON_RUNS_MAX_BLOB_BYTES", "10")])).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("runs.max_blob_bytes"), "{err}");
    }

    #[test]
    fn the_llm_section_is_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("andon.toml");
        assert!(load(None, &[]).unwrap().validate().unwrap().llm.is_none(), "no [llm], no model");
        std::fs::write(
            &path,
            "[llm]\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"m\"\nfallback_model = \"s\"\n\
             [llm.tasks]\nnarrate = \"big\"\n",
        )
        .unwrap();
        let llm = load(Some(&path), &[]).unwrap().validate().unwrap().llm.unwrap();
        assert_eq!((llm.tasks["narrate"].as_str(), llm.timeout_secs, llm.max_attempts), ("big", 60, 3));
        assert_eq!(llm.api_key_env, "ANDON_LLM_API_KEY");
        for (bad, key) in [
            ("base_url = \"127.0.0.1:8000\"\nmodel = \"m\"", "llm.base_url"),
            ("base_url = \"http://x/v1\"\nmodel = \"m\"\n[llm.tasks]\nsummarize = \"m\"", "llm.tasks.summarize"),
            ("base_url = \"http://x/v1\"\nmodel = \"m\"\nmax_attempts = 0", "llm.max_attempts"),
        ] {
            std::fs::write(&path, format!("[llm]\n{bad}\n")).unwrap();
            let err = load(Some(&path), &[]).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
        // The environment sets it too, key by key, over the file.
        std::fs::write(&path, "[llm]\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"m\"\n").unwrap();
        let env = vars(&[
            ("ANDON_LLM_MODEL", "from-env"),
            ("ANDON_LLM_INVESTIGATION_MAX_STEPS", "5"),
            ("ANDON_LLM_TASKS", "{ investigate = \"big\" }"),
        ]);
        let llm = load(Some(&path), &env).unwrap().validate().unwrap().llm.unwrap();
        assert_eq!((llm.model.as_str(), llm.investigation_max_steps), ("from-env", 5));
        assert_eq!(llm.tasks["investigate"], "big");
        let env = vars(&[("ANDON_LLM_BASE_URL", "http://10.0.0.2:8000/v1"), ("ANDON_LLM_MODEL", "m")]);
        assert_eq!(load(None, &env).unwrap().validate().unwrap().llm.unwrap().base_url, "http://10.0.0.2:8000/v1");
        let err = load(None, &vars(&[("ANDON_LLM_MODEL", "m")])).unwrap_err();
        assert!(format!("{err:#}").contains("base_url"), "{err:#}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("ANDON_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    }

    /// Lines that look like andon.toml: known sections and keys, values of any type.
    fn config_text() -> impl Strategy<Value = String> {
        let section = prop_oneof![
            Just(""),
            Just("[otlp]"),
            Just("[api]"),
            Just("[storage]"),
            Just("[analysis]"),
            Just("[tickets]"),
            Just("[tls]"),
            Just("[[auth.tokens]]"),
            Just("[[analysis.flows]]")
        ];
        let key = prop_oneof![
            Just("data_dir"),
            Just("listen"),
            Just("addr"),
            Just("grpc_addr"),
            Just("max_request_bytes"),
            Just("retention_hours"),
            Just("durability"),
            Just("window_secs"),
            Just("fdr"),
            Just("segments"),
            Just("name"),
            Just("role"),
            Just("token_sha256"),
            Just("cert_file"),
            Just("steps"),
            Just("sink")
        ];
        let value = prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            "\\PC{0,20}".prop_map(|v| format!("{v:?}")),
            Just("[\"a\", 1]".to_owned()),
            Just("true".to_owned()),
            "[ -~]{0,12}"
        ];
        prop::collection::vec((section, key, value), 0..12)
            .prop_map(|lines| lines.into_iter().map(|(s, k, v)| format!("{s}\n{k} = {v}\n")).collect::<String>())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// A configuration file or variable of any content is read or refused
        /// with an error; nothing panics.
        #[test]
        fn any_config_is_loaded_or_refused_cleanly(text in config_text(), raw in "\\PC{0,200}", env in "\\PC{0,20}") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("andon.toml");
            for content in [&text, &raw] {
                std::fs::write(&path, content).unwrap();
                if let Ok(cfg) = load(Some(&path), &[]) {
                    let _ = cfg.validate();
                }
            }
            let vars = [("ANDON_OTLP_MAX_REQUEST_BYTES".to_owned(), env.clone()), ("ANDON_ANALYSIS_FDR".to_owned(), env)];
            if let Ok(cfg) = load(None, &vars) {
                let _ = cfg.validate();
            }
        }
    }
}

#[cfg(test)]
mod example {
    use super::*;

    #[test]
    fn the_example_config_lists_every_key_with_its_default() {
        // At run time: a cached test binary may have been built in another checkout.
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let path = Path::new(&manifest).join("../andon.example.toml");
        let raw = load(Some(&path), &[]).unwrap();
        assert_eq!(toml::Table::try_from(raw).unwrap(), toml::Table::try_from(RawConfig::default()).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let defaults = toml::Table::try_from(RawConfig::default()).unwrap();
        for (section, v) in &defaults {
            for key in v.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_else(|| vec![section.clone()]) {
                assert!(text.contains(&format!("\n{key} =")), "andon.example.toml lacks {key}");
            }
        }
    }
}
