//! `andon import`: OTLP JSON lines files (one `ExportTraceServiceRequest` per line,
//! as the OTel Collector's file exporter writes them, `.gz` too) into Andon.
//!
//! By default the spans go to a running server over OTLP/HTTP, through exactly the
//! path live exporters use. With `--data-dir` they go straight into a store that no
//! server has open, through the same `Ingestor`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use andon_ingest::{IngestConfig, Ingestor};
use andon_model::Tenant;
use andon_model::clock::SystemClock;
use andon_store::Store;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// OTLP JSON lines files; `.gz` files are decompressed.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// OTLP/HTTP endpoint of a running server.
    #[arg(long, default_value = "http://127.0.0.1:4318", env = "ANDON_OTLP_ENDPOINT")]
    pub endpoint: String,
    /// Tenant to import into (sent as X-Scope-OrgID).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Write into this data directory directly instead of sending to a server.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Requests are merged up to about this many encoded bytes before sending.
const BATCH_BYTES: usize = 2 << 20;

#[derive(Debug, Default)]
struct Totals {
    spans: u64,
    stored: u64,
    rejected: u64,
    duplicates: u64,
    bad_lines: u64,
}

enum Target {
    Server { client: reqwest::Client, url: String, tenant: Option<String> },
    Local { ingestor: Ingestor, store: Store, tenant: Tenant },
}

impl Target {
    async fn send(&self, req: ExportTraceServiceRequest, totals: &mut Totals) -> anyhow::Result<()> {
        match self {
            Target::Local { ingestor, store, tenant } => {
                // No server runs here to flush the buffer: when it is full,
                // this command flushes it to segments before sending more.
                if store.buffer_full() {
                    let store = store.clone();
                    tokio::task::spawn_blocking(move || store.flush()).await??;
                }
                let out = ingestor.export(tenant, req).await?;
                totals.stored += out.stored as u64;
                totals.duplicates += out.duplicates as u64;
                totals.rejected += out.rejected;
            }
            Target::Server { client, url, tenant } => {
                let body = req.encode_to_vec();
                let spans: u64 = count_spans(&req);
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut r = client.post(url).header("content-type", "application/x-protobuf").body(body.clone());
                    if let Some(t) = tenant {
                        r = r.header(andon_model::TENANT_HEADER, t);
                    }
                    // With auth on, an `ingest` token from the environment.
                    if let Some(t) = std::env::var("ANDON_TOKEN").ok().filter(|t| !t.is_empty()) {
                        r = r.bearer_auth(t);
                    }
                    let resp = r.send().await;
                    let retry_in = match resp {
                        Ok(resp) if resp.status().is_success() => {
                            let bytes = resp.bytes().await?;
                            let parsed = ExportTraceServiceResponse::decode(bytes.as_ref()).unwrap_or_default();
                            let rejected = parsed.partial_success.map_or(0, |p| p.rejected_spans.max(0) as u64);
                            totals.rejected += rejected;
                            totals.stored += spans.saturating_sub(rejected);
                            return Ok(());
                        }
                        Ok(resp) if matches!(resp.status().as_u16(), 429 | 502 | 503 | 504) => resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .map_or(Duration::from_secs(1), Duration::from_secs),
                        Ok(resp) => {
                            let status = resp.status();
                            let text = resp.text().await.unwrap_or_default();
                            bail!("server refused the export ({status}): {}", text.escape_debug());
                        }
                        Err(e) if attempt < 10 => {
                            tracing::warn!(error = %e, "export failed, retrying");
                            Duration::from_secs(1)
                        }
                        Err(e) => return Err(e).context("sending to the server"),
                    };
                    if attempt >= 30 {
                        bail!("server still busy after {attempt} attempts");
                    }
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
        Ok(())
    }
}

fn count_spans(req: &ExportTraceServiceRequest) -> u64 {
    req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum()
}

/// Reads the files on a thread of its own, sending merged requests down `tx`.
fn read_files(
    files: Vec<PathBuf>,
    progress: ProgressBar,
    tx: tokio::sync::mpsc::Sender<ExportTraceServiceRequest>,
) -> anyhow::Result<u64> {
    let mut bad_lines = 0;
    for path in files {
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let raw = progress.wrap_read(file);
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(raw))
        } else {
            Box::new(raw)
        };
        let mut merged = ExportTraceServiceRequest::default();
        let mut merged_bytes = 0;
        for (n, line) in BufReader::new(reader).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<ExportTraceServiceRequest>(&line) {
                Ok(req) => {
                    merged_bytes += line.len() / 3;
                    merged.resource_spans.extend(req.resource_spans);
                    if merged_bytes >= BATCH_BYTES {
                        if tx.blocking_send(std::mem::take(&mut merged)).is_err() {
                            return Ok(bad_lines);
                        }
                        merged_bytes = 0;
                    }
                }
                Err(e) => {
                    bad_lines += 1;
                    progress
                        .suspend(|| eprintln!("{}:{}: not an OTLP JSON export request: {e}", path.display(), n + 1));
                }
            }
        }
        if !merged.resource_spans.is_empty() && tx.blocking_send(merged).is_err() {
            return Ok(bad_lines);
        }
    }
    Ok(bad_lines)
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let total_bytes: u64 = args.files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).sum();
    let progress = ProgressBar::new(total_bytes);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let target = match &args.data_dir {
        Some(dir) => {
            let tenant = Tenant::from_header(args.tenant.as_deref())?;
            // The store as `andon serve` would open it: ANDON_* variables apply.
            let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("ANDON_")).collect();
            let mut raw = crate::config::load(None, &vars)?;
            raw.apply(crate::config::Overrides { data_dir: Some(dir.clone()), ..Default::default() });
            let config = raw.validate()?.store;
            let store = tokio::task::spawn_blocking(move || Store::open(config)).await??;
            let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
            Target::Local { ingestor, store, tenant }
        }
        None => {
            let client = crate::client::http_client(Some(Duration::from_secs(120)))?;
            let url = format!("{}/v1/traces", args.endpoint.trim_end_matches('/'));
            Target::Server { client, url, tenant: args.tenant.clone() }
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reader = {
        let files = args.files.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || read_files(files, progress, tx))
    };
    let mut totals = Totals::default();
    let mut failure = None;
    while let Some(req) = rx.recv().await {
        totals.spans += count_spans(&req);
        if let Err(e) = target.send(req, &mut totals).await {
            failure = Some(e);
            break;
        }
        progress.set_message(format!("{} spans", totals.spans));
    }
    drop(rx);
    totals.bad_lines = reader.await??;
    progress.finish_and_clear();
    if let Target::Local { store, .. } = target {
        tokio::task::spawn_blocking(move || store.close()).await??;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    println!(
        "imported {} of {} spans from {} files in {:.1}s ({} duplicates, {} rejected, {} unreadable lines)",
        totals.stored,
        totals.spans,
        args.files.len(),
        started.elapsed().as_secs_f64(),
        totals.duplicates,
        totals.rejected,
        totals.bad_lines
    );
    if totals.bad_lines > 0 {
        bail!("{} lines could not be read; everything else was imported", totals.bad_lines);
    }
    Ok(())
}
