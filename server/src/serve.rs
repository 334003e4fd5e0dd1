//! `andon serve`: opens the store, binds the three ports, serves until SIGTERM or
//! Ctrl-C, then drains in-flight requests and flushes everything to segments.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use andon_analysis::db::FindingsTable;
use andon_analysis::runner::RunnerStats;
use andon_analysis::{Analyzer, FindingsDb};
use andon_ingest::Ingestor;
use andon_ingest::listen::{Incoming, Port, TlsConfig, TlsFiles};
use andon_model::clock::SystemClock;
use andon_store::{QueryEngine, Store};
use andon_ticketing::Ticketing;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use andon_web::AppState;
use andon_web::pipeline::{Incidents, Pipeline};

use crate::config::Config;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {what} on {addr}"))
}

/// The TLS configuration of each port, from the one `[tls]` section.
struct TlsPorts {
    grpc: Arc<TlsConfig>,
    http: Arc<TlsConfig>,
    api: Arc<TlsConfig>,
}

impl TlsPorts {
    fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        Ok(Self {
            grpc: TlsConfig::load(files.clone(), Port::OtlpGrpc)?,
            http: TlsConfig::load(files.clone(), Port::OtlpHttp)?,
            api: TlsConfig::load(files.clone(), Port::Api)?,
        })
    }
}

/// Reads the certificate, key and client CA files again on every SIGHUP, so a
/// renewed certificate is served without a restart. A reload that fails keeps
/// the previous certificate on every port.
async fn reload_tls_on_sighup(tls: TlsPorts, mut hup: tokio::signal::unix::Signal, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Build all three first, so that the ports never serve different certificates.
        let ports = [&tls.grpc, &tls.http, &tls.api];
        match ports.iter().map(|p| p.prepare()).collect::<Result<Vec<_>, _>>() {
            Ok(configs) => {
                for (port, config) in ports.iter().zip(configs) {
                    port.install(config);
                }
                info!("TLS certificates reloaded");
            }
            Err(e) => warn!(error = %e, "reloading TLS failed; the previous certificate stays"),
        }
    }
}

/// Records versions first seen in spans as inferred changes, once per detection
/// interval, so the lineage shows deploys no pipeline reported.
async fn infer_changes(
    query: QueryEngine,
    changes: Arc<andon_rca::ChangesDb>,
    enricher: Option<Arc<andon_rca::github::GitHubEnricher>>,
    interval_secs: u64,
    mut stop: watch::Receiver<bool>,
) {
    if interval_secs == 0 {
        return;
    }
    let every = std::time::Duration::from_secs(interval_secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = chrono::Utc::now();
        // Overlapping windows: a version is recorded once, whichever sees it first.
        let from = now - chrono::Duration::seconds(2 * interval_secs as i64 + 60);
        let hours = (from.timestamp().div_euclid(3600) - 1, now.timestamp().div_euclid(3600));
        for tenant in query.store().tenants(hours) {
            let lookback = chrono::Duration::hours(1);
            match andon_rca::link::infer_versions(&query, &tenant, &changes, None, from, now, lookback).await {
                Ok((_, ids)) => {
                    if let Some(e) = &enricher {
                        Arc::clone(e).spawn_for(Arc::clone(&changes), tenant, ids);
                    }
                }
                Err(e) => warn!(tenant = %tenant.as_str(), error = %e, "inferring changes from spans failed"),
            }
        }
    }
}

/// Samples the ingest counters for the UI's ingest-rate chart.
async fn sample_ingest(app: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(andon_web::ingest_history::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let s = app.ingestor.stats().snapshot();
        let rejected = s.spans_rejected.iter().map(|(_, n)| n).sum();
        app.ingest_history.record(chrono::Utc::now(), s.spans_accepted, rejected);
    }
}

/// A started server: its addresses and state, and what stopping it waits for.
pub struct Running {
    pub app: Arc<AppState>,
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub api_addr: std::net::SocketAddr,
    store: Store,
    maintenance: std::thread::JoinHandle<()>,
    stop_tx: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// `andon serve`: start, serve until SIGTERM or Ctrl-C, then stop.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.store.data_dir.clone();
    let running = start(config).await?;
    println!("listening otlp-grpc={} otlp-http={} api={}", running.grpc_addr, running.http_addr, running.api_addr);
    info!(grpc_addr = %running.grpc_addr, http_addr = %running.http_addr, api_addr = %running.api_addr,
        data_dir = %data_dir.display(), "andon serving");
    shutdown_signal().await;
    running.stop().await
}

/// Opens the store and the databases, binds the three ports and starts serving,
/// detection, lineage inference and the ticket outbox.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config)).await?.context("opening the store")?;
    let maintenance = store.spawn_maintenance();
    let ingestor = Arc::new(Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), config.ingest.clone()));
    let query = QueryEngine::new(store.clone(), config.query, config.query_threads)?;
    let analyzer = Analyzer::new(query.clone(), config.analysis.clone())?;
    let db_path = config.store.data_dir.join("andon.db");
    let findings = Arc::new(
        tokio::task::spawn_blocking(move || FindingsDb::open(&db_path))
            .await?
            .context("opening the findings database")?,
    );
    query.register(Arc::new(FindingsTable { db: Arc::clone(&findings) }));
    let changes_path = config.store.data_dir.join("andon.db");
    let changes = Arc::new(
        tokio::task::spawn_blocking(move || andon_rca::ChangesDb::open(&changes_path))
            .await?
            .context("opening the changes database")?,
    );
    query.register(Arc::new(andon_rca::ChangesTable { db: Arc::clone(&changes) }));
    let incidents_path = config.store.data_dir.join("andon.db");
    let incidents_db = Arc::new(
        tokio::task::spawn_blocking(move || andon_rca::IncidentsDb::open(&incidents_path))
            .await?
            .context("opening the incidents database")?,
    );
    let (runs_path, limits) = (config.store.data_dir.join("andon.db"), config.runs);
    let runs = Arc::new(
        tokio::task::spawn_blocking(move || andon_analysis::recorder::RunsDb::open(&runs_path, limits))
            .await?
            .context("opening the flight recorder")?,
    );
    let tickets_path = config.store.data_dir.join("andon.db");
    let settings = config.tickets.clone();
    let tickets = Arc::new(
        tokio::task::spawn_blocking(move || Ticketing::open(&tickets_path, settings, &|k| std::env::var(k).ok()))
            .await?
            .context("opening tickets")?
            .recording(Arc::clone(&runs) as Arc<dyn andon_model::RunLog>),
    );
    query.register(Arc::new(andon_analysis::recorder::RunsTable { db: Arc::clone(&runs) }));
    let investigations_path = config.store.data_dir.join("andon.db");
    let investigations = Arc::new(
        tokio::task::spawn_blocking(move || andon_rca::InvestigationsDb::open(&investigations_path))
            .await?
            .context("opening the investigations database")?,
    );
    let runner = Arc::new(RunnerStats::default());
    let mut rca = andon_rca::Rca::new(query.clone(), Arc::clone(&changes), Arc::clone(&incidents_db));
    config.rca.apply(&mut rca);
    rca.recorder = Some(Arc::clone(&runs));
    let analyzer = analyzer.recording(Arc::clone(&runs));
    let mut llm = None;
    let mut agent_limits = andon_rca::llm::LlmConfig::default_agent_limits();
    if let Some(l) = &config.llm {
        let redactor = andon_ticketing::redact::Redactor::new(&config.tickets.redact_attributes);
        let client = Arc::new(
            andon_rca::llm::Llm::new(l.clone(), redactor, &|k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?,
        );
        info!(base_url = %l.base_url, narrate = client.model_for(andon_rca::llm::Task::Narrate),
            investigate = client.model_for(andon_rca::llm::Task::Investigate),
            "narratives and investigations by a model, checked against their evidence");
        rca.narrator = Arc::new(andon_rca::llm::LlmNarrator::new(Arc::clone(&client)));
        agent_limits = l.agent_limits();
        llm = Some(client);
    }
    let pipeline =
        Arc::new(Pipeline { findings: Arc::clone(&findings), tickets: Arc::clone(&tickets), rca: Arc::new(rca) });
    let enricher = if config.rca.github_enrich {
        let token = std::env::var(&config.rca.github_token_env).ok().filter(|t| !t.is_empty());
        let e = andon_rca::github::GitHubEnricher::new(
            &config.rca.github_api_url,
            token,
            std::time::Duration::from_secs(10),
        )
        .context("rca.github_api_url")?;
        Some(Arc::new(e))
    } else {
        None
    };

    let tls = match &config.tls {
        Some(files) => Some(TlsPorts::load(files)?),
        None => None,
    };
    let grpc = Incoming::new(bind("otlp-grpc", config.grpc_addr).await?, tls.as_ref().map(|t| Arc::clone(&t.grpc)))?;
    let http = Incoming::new(bind("otlp-http", config.http_addr).await?, tls.as_ref().map(|t| Arc::clone(&t.http)))?;
    let api_listener = Incoming::new(bind("api", config.api_addr).await?, tls.as_ref().map(|t| Arc::clone(&t.api)))?;
    let (grpc_addr, http_addr, api_addr) = (grpc.local_addr(), http.local_addr(), api_listener.local_addr());

    let app = Arc::new(AppState {
        store: store.clone(),
        query,
        analyzer: analyzer.clone(),
        findings: Arc::clone(&findings),
        tickets: Arc::clone(&tickets),
        changes,
        incidents: incidents_db,
        investigations,
        runs: Arc::clone(&runs),
        llm,
        agent_limits,
        pipeline,
        enricher: enricher.clone(),
        runner: Arc::clone(&runner),
        ingest_history: Arc::default(),
        ingestor: Arc::clone(&ingestor),
        ready: AtomicBool::new(false),
        started: Instant::now(),
        auth: Arc::clone(&config.auth),
        sessions: Default::default(),
        secure_cookies: tls.is_some(),
        allowed_hosts: config.allowed_hosts.clone(),
        limits: andon_web::limits::RateLimits::new(config.opened_per_minute),
        max_analyze_range: chrono::Duration::hours(config.max_analyze_range_hours as i64),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_detection = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let grpc_serving = andon_ingest::grpc::serve(grpc, Arc::clone(&ingestor), stopped());
    let grpc_task = tokio::spawn(async move { grpc_serving.await.context("otlp-grpc server") });
    let http_serving =
        andon_ingest::listen::serve_http(http, andon_ingest::http::router(Arc::clone(&ingestor)), stopped());
    let http_task = tokio::spawn(async move { http_serving.await.context("otlp-http server") });
    let api_serving = andon_ingest::listen::serve_http(api_listener, andon_web::router(Arc::clone(&app)), stopped());
    let api_task = tokio::spawn(async move { api_serving.await.context("api server") });
    let sampling = tokio::spawn(sample_ingest(Arc::clone(&app), stop_rx_detection.clone()));
    let resolving = Arc::clone(&findings);
    let on_resolved = Arc::new(move |tenant: &andon_model::Tenant, ids: &[String]| {
        if let Err(e) = resolving.resolve_ids(tenant, ids) {
            warn!(error = %e, "resolving findings of a closed issue failed");
        }
    });
    let outbox = tokio::spawn(Arc::clone(&tickets).run(on_resolved, stop_rx_detection.clone()));
    let pruning = tokio::spawn(prune_runs(runs, stop_rx_detection.clone()));
    let mut background = vec![outbox, sampling, pruning];
    if let Some(tls) = tls {
        // Listening before the ports are announced, so that no SIGHUP is missed
        // (or, unhandled, ends the process).
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP, which reloads the TLS certificates")?;
        background.push(tokio::spawn(reload_tls_on_sighup(tls, hup, stop_rx_detection)));
    }
    app.ready.store(true, Ordering::Release);
    let mut running = Running {
        app,
        grpc_addr,
        http_addr,
        api_addr,
        store,
        maintenance,
        stop_tx,
        servers: vec![grpc_task, http_task, api_task],
        background,
    };
    running.start_detection(config.analysis.interval_secs)?;
    Ok(running)
}

impl Running {
    /// Starts continuous detection, and the recording of versions first seen in
    /// spans, every `interval_secs` (neither when it is 0).
    pub fn start_detection(&mut self, interval_secs: u64) -> anyhow::Result<()> {
        if interval_secs == 0 {
            return Ok(());
        }
        let app = &self.app;
        let mut cfg = app.analyzer.config().clone();
        cfg.interval_secs = interval_secs;
        let analyzer = Analyzer::new(app.query.clone(), cfg)?.recording(Arc::clone(&app.runs));
        let pipeline = Arc::clone(&app.pipeline);
        let after_pass: andon_analysis::runner::AfterPass = Arc::new(move |tenant, found, cutoff| {
            let pipeline = Arc::clone(&pipeline);
            Box::pin(async move {
                let n = found.len();
                let after = pipeline
                    .after_pass(&tenant, found, Some(cutoff), Incidents::Background)
                    .await
                    .map_err(|e| e.to_string())?;
                if n > 0 || after.resolved > 0 {
                    info!(tenant = %tenant.as_str(), findings = n, resolved = after.resolved, "detection pass");
                }
                Ok(())
            })
        });
        let stop = self.stop_tx.subscribe();
        self.background.push(tokio::spawn(andon_analysis::runner::run(
            analyzer,
            Arc::clone(&app.runner),
            after_pass,
            stop.clone(),
        )));
        self.background.push(tokio::spawn(infer_changes(
            app.query.clone(),
            Arc::clone(&app.changes),
            app.enricher.clone(),
            interval_secs,
            stop,
        )));
        Ok(())
    }

    /// Drains in-flight requests, stops the background work and flushes the
    /// store to segments.
    pub async fn stop(self) -> anyhow::Result<()> {
        info!("shutting down: draining in-flight requests");
        self.app.ready.store(false, Ordering::Release);
        let _ = self.stop_tx.send(true);
        for task in self.servers {
            task.await??;
        }
        for task in self.background {
            let _ = task.await;
        }
        let closing = self.store.clone();
        tokio::task::spawn_blocking(move || closing.close()).await?.context("flushing the store")?;
        let maintenance = self.maintenance;
        let _ = tokio::task::spawn_blocking(move || maintenance.join()).await;
        info!("shutdown complete");
        Ok(())
    }
}

/// Drops the flight recorder's runs past their retention, at start and hourly.
async fn prune_runs(runs: Arc<andon_analysis::recorder::RunsDb>, mut stop: watch::Receiver<bool>) {
    loop {
        let db = Arc::clone(&runs);
        match tokio::task::spawn_blocking(move || db.prune(chrono::Utc::now())).await {
            Ok(Ok(n)) if n > 0 => info!(runs = n, "flight recorder: runs past retention dropped"),
            Ok(Err(e)) => warn!(error = %e, "flight recorder: pruning failed"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
