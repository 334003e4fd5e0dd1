//! `andon demo`: the whole product in one command. It starts a server on a
//! temporary data directory, registers the simulated shop's deploys and their
//! gate evidence, sends hours of the shop's history through the OTLP/gRPC
//! receiver, backtests it, opens incidents for what it finds and runs their
//! RCA, then keeps the shop's live traffic flowing until Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use andon_fixtures::{SCENARIOS, SimConfig, Simulation};
use andon_model::{FindingState, Tenant};
use anyhow::{Context, bail};
use chrono::Utc;
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use tokio::sync::{oneshot, watch};
use tonic::transport::Channel;

use crate::config;
use crate::serve;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The shop's fault scenario (`andon-fixtures scenarios` lists them).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Hours of history sent before going live.
    #[arg(long, default_value_t = 3.0)]
    hours: f64,
    /// Sessions started per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Swing the rate over the day (±45%, peaking at 19:00 UTC) as the shop's
    /// real traffic does. Off by default, so the demo finds the same things
    /// whatever the hour.
    #[arg(long)]
    diurnal: bool,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Keep the data here instead of in a temporary directory removed on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A configuration file (for example a GitHub ticket sink); ports and the
    /// data directory still come from the flags.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:4317")]
    otlp_grpc_addr: String,
    #[arg(long, default_value = "127.0.0.1:4318")]
    otlp_http_addr: String,
    #[arg(long, default_value = "127.0.0.1:4380")]
    api_addr: String,
    /// Stop after the history is analysed instead of sending live traffic.
    #[arg(long)]
    no_live: bool,
}

/// The most detection passes the demo replays over its history.
const DEMO_PASSES: usize = 8;

/// Where the shop's traffic is at: the history is in, then live batches follow.
struct Fed {
    spans: usize,
    requests: usize,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let scenario = andon_fixtures::scenario(&args.scenario)
        .with_context(|| format!("unknown scenario {:?}; choose one of {}", args.scenario, SCENARIOS.join(", ")))?;
    if !(args.hours.is_finite() && args.hours >= 0.25 && args.hours <= 24.0) {
        bail!("--hours must be between 0.25 and 24");
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 50.0) {
        bail!("--rate must be above 0 and at most 50 sessions per second");
    }
    let started = Instant::now();
    let (data_dir, _temp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t =
                tempfile::Builder::new().prefix("andon-demo-").tempdir().context("creating a temporary directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("ANDON_")).collect();
    let mut raw = config::load(args.config.as_deref(), &vars)?;
    raw.apply(config::Overrides {
        data_dir: Some(data_dir.clone()),
        otlp_grpc_addr: Some(args.otlp_grpc_addr.clone()),
        otlp_http_addr: Some(args.otlp_http_addr.clone()),
        api_addr: Some(args.api_addr.clone()),
        listen: None,
    });
    // A temporary directory is removed at the end: syncing its WAL on every
    // export would only slow the history down. Kept data is synced as usual,
    // and so is a temporary directory when durability is set explicitly.
    let chosen = args.config.is_some() || vars.iter().any(|(k, _)| k == "ANDON_STORAGE_DURABILITY");
    if args.data_dir.is_none() && !chosen {
        raw.storage.durability = "none".into();
    }
    let mut config = raw.validate()?;
    crate::init_logging(config.log_json, "warn");
    // Continuous detection starts once the history is in and backtested: a pass
    // over a half-sent history would judge traces whose spans have not arrived.
    let detection_interval = std::mem::replace(&mut config.analysis.interval_secs, 0);

    let mut running = serve::start(config).await?;
    let ui = format!("http://{}", running.api_addr);
    println!("andon demo: serving on {ui} (data in {})", data_dir.display());
    println!("  otlp-grpc {}  otlp-http {}  api and web UI {}", running.grpc_addr, running.http_addr, running.api_addr);

    let end = Utc::now();
    let mut cfg = SimConfig::new(scenario, args.seed, args.rate, args.hours, end);
    cfg.live = !args.no_live;
    cfg.diurnal = args.diurnal;
    let sim = Simulation::new(cfg)?;
    let truth = sim.ground_truth().clone();
    println!("shop: scenario {}: {}", truth.scenario, truth.description);

    // The shop's pipeline reports its deploys with their gate evidence, as a CI
    // job would with `andon changes add`.
    let tenant = Tenant::default_tenant();
    let changes = sim.changes().to_vec();
    let db = std::sync::Arc::clone(&running.app.changes);
    let t = tenant.clone();
    let n_changes = changes.len();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for c in changes {
            db.add(&t, c)?;
        }
        Ok(())
    })
    .await??;
    println!("changes: {n_changes} deploys recorded with their CI and review gates");

    let (stop_tx, stop_rx) = watch::channel(false);
    let (history_tx, history_rx) = oneshot::channel();
    let endpoint = format!("http://{}", running.grpc_addr);
    let mut feeder = tokio::spawn(feed(sim, endpoint, history_tx, stop_rx));
    let mut feeder_result = None;

    let interrupted = tokio::select! {
        fed = history_rx => {
            let fed = fed.context("the shop stopped before its history was sent")??;
            println!(
                "history: {} spans in {} OTLP/gRPC exports, {:.1} hours ending now ({:.0}s)",
                fed.spans,
                fed.requests,
                args.hours,
                started.elapsed().as_secs_f64()
            );
            false
        }
        _ = tokio::signal::ctrl_c() => true,
    };
    if !interrupted {
        summarize(&running, &tenant, &truth, started).await?;
        running.start_detection(detection_interval)?;
        println!();
        println!("Look around:");
        println!("  web UI      {ui}/");
        println!("  findings    andon findings --server {ui}");
        println!("  tickets     andon tickets --server {ui}   (or approve one at {ui}/tickets)");
        println!("  incidents   andon incidents --server {ui}");
        println!("  SQL         andon query --server {ui} \"SELECT service_name, count(*) FROM spans GROUP BY 1\"");
        if args.no_live {
            println!("(--no-live: stopping)");
        } else {
            println!("Live traffic keeps flowing and detection runs on it. Ctrl-C stops the demo.");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                r = &mut feeder => feeder_result = Some(r),
            }
        }
    }
    let _ = stop_tx.send(true);
    let r = match feeder_result {
        Some(r) => r,
        None => feeder.await,
    };
    if let Ok(Err(e)) = r {
        eprintln!("the shop's traffic stopped: {e:#}");
    }
    println!("stopping");
    running.stop().await?;
    Ok(())
}

/// Exports of the history in flight at once. One at a time, the shop's
/// generator, the client and the receiver's WAL take turns; two keep both
/// cores busy.
const IN_FLIGHT: usize = 2;

/// Attempts at one export the receiver refuses with a retryable status.
const ATTEMPTS: u32 = 8;

/// Sends one batch as an OpenTelemetry Collector forwards what it received:
/// the request as it is, over the OTLP/gRPC client, retrying the statuses the
/// OTLP specification calls retryable with exponential backoff (the receiver
/// deduplicates spans sent twice). `RESOURCE_EXHAUSTED` is among them: OTLP
/// allows retrying it when the server can recover, and this one can (the
/// receiver says `UNAVAILABLE` when it is overloaded in any case). Rejected
/// spans are an error: the demo's spans are all valid.
async fn export(mut client: TraceServiceClient<Channel>, request: ExportTraceServiceRequest) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.export(request.clone()).await {
            Ok(response) => {
                if let Some(partial) = response.into_inner().partial_success.filter(|p| p.rejected_spans > 0) {
                    bail!("the receiver rejected {} spans: {}", partial.rejected_spans, partial.error_message);
                }
                return Ok(());
            }
            Err(status) if attempt < ATTEMPTS && retryable(status.code()) => {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
            }
            Err(status) => bail!("export failed after {attempt} attempts: {status}"),
        }
    }
}

/// The gRPC statuses after which OTLP says to retry.
fn retryable(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Sends the history as fast as the receiver takes it, reports, then sends live
/// batches at their wall-clock times until stopped. The shop generates its
/// batches on a thread of its own, a few ahead of the sender.
async fn feed(
    sim: Simulation,
    endpoint: String,
    history_done: oneshot::Sender<anyhow::Result<Fed>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = TraceServiceClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("connecting to the OTLP/gRPC receiver at {endpoint}"))?
        .max_encoding_message_size(usize::MAX);
    let (tx, mut batches) = tokio::sync::mpsc::channel(4);
    let generator = tokio::task::spawn_blocking(move || {
        let mut sim = sim;
        while let Some(batch) = sim.next_batch() {
            if tx.blocking_send(batch).is_err() {
                break;
            }
        }
    });
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut fed = Fed { spans: 0, requests: 0 };
    let mut history_done = Some(history_done);
    let result = async {
        while let Some(batch) = batches.recv().await {
            let now = Utc::now();
            if batch.not_before > now {
                // The history is in once every export of it is acknowledged.
                while let Some(sent) = in_flight.next().await {
                    sent?;
                }
                if let Some(done) = history_done.take() {
                    let _ = done.send(Ok(Fed { spans: fed.spans, requests: fed.requests }));
                }
                let wait = (batch.not_before - now).to_std().unwrap_or(Duration::ZERO);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
            if in_flight.len() >= IN_FLIGHT {
                in_flight.next().await.context("no export in flight")??;
            }
            fed.spans += batch.spans;
            fed.requests += 1;
            in_flight.push(export(client.clone(), batch.request));
        }
        while let Some(sent) = in_flight.next().await {
            sent?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Without live traffic the history ends the simulation.
    if let Some(done) = history_done.take() {
        let _ = done.send(match &result {
            Ok(()) => Ok(Fed { spans: fed.spans, requests: fed.requests }),
            Err(e) => Err(anyhow::anyhow!("sending the history failed: {e:#}")),
        });
    }
    drop(batches);
    let _ = generator.await;
    result
}

/// Backtests the history, opens incidents for the serious findings and prints
/// what a newcomer should look at.
async fn summarize(
    running: &serve::Running,
    tenant: &Tenant,
    truth: &andon_fixtures::GroundTruth,
    started: Instant,
) -> anyhow::Result<()> {
    let app = &running.app;
    // Flushed spans are what detection reads fastest; the rest is read from memory.
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.flush()).await?.context("flushing the store")?;
    // What continuous detection would have reported over the history: its
    // passes replayed, each looking back as a live pass does, spaced out to
    // at most DEMO_PASSES so the demo is ready in a couple of minutes.
    let replay = app
        .replay(tenant, truth.start, truth.end, Some(DEMO_PASSES), andon_web::pipeline::Incidents::Wait)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.1))?;
    let incidents = replay.incidents;
    let open: Vec<_> = replay.findings.iter().filter(|f| f.state == FindingState::Open).collect();
    println!(
        "detection: {} findings from {} statistical tests in {} replayed passes ({:.0}s)",
        open.len(),
        replay.tests,
        replay.passes,
        started.elapsed().as_secs_f64()
    );
    for f in &open {
        println!("  {:<8} {}  (first seen {})", f.severity.as_str(), f.summary, f.first_seen.format("%H:%M"));
    }
    println!(
        "incidents: {} opened, each with its root-cause analysis ({:.0}s)",
        incidents.len(),
        started.elapsed().as_secs_f64()
    );
    for inc in &incidents {
        println!("  {}  {}", inc.id, inc.title);
    }
    let tickets = std::sync::Arc::clone(&app.tickets);
    let t = tenant.clone();
    let pending =
        tokio::task::spawn_blocking(move || tickets.db().list(&t, Some(andon_model::TicketState::Pending))).await??;
    println!("tickets: {} drafts wait at the human gate", pending.len());
    Ok(())
}
