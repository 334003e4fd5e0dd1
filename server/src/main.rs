//! `andon`: the single binary. `andon serve` runs the receivers, the store and the
//! API in one process; the other commands are clients of a running server (or, for
//! `import --data-dir`, of a data directory).

mod agents_cli;
mod changes_cli;
mod client;
mod config;
mod demo;
mod findings_cli;
mod import;
mod incidents_cli;
mod query_cli;
mod serve;
mod tickets_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Ingest allocates and frees many small buffers per span (protobuf decoding,
// Arrow builders); mimalloc handles that pattern far better than glibc malloc.
// Built without transparent huge pages (the `no_thp` feature): mimalloc would
// advise them for its memory, and each fault into fresh memory then zeroes 2
// MiB, a fifth of the server's CPU at 40,000 spans/s (BENCHMARKS.md). Where
// the kernel forces them (`transparent_hugepage=always`), MIMALLOC_ALLOW_THP=0
// turns them off for the process.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its index in the `mi_option_e` enum of
/// both the v2 and the v3 headers the `mimalloc` crate builds.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long mimalloc keeps memory freed before it returns it to the system,
/// in milliseconds. Its default (1,000 in v3) is longer than a flush cycle
/// at full rate (about half a second: the buffer's batches and the flush's
/// copies freed at once), so the freed memory of two or three flushes stayed
/// resident: a tenth of a second of it or less keeps the peak near what the
/// heap holds (BENCHMARKS.md, "Freed memory returned within 10 ms").
const PURGE_DELAY_MS: std::ffi::c_long = 10;

#[allow(unsafe_code)]
mod mimalloc_options {
    unsafe extern "C" {
        pub fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
        #[cfg(test)]
        pub fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    }

    /// Sets one of mimalloc's options.
    pub fn set(option: std::ffi::c_int, value: std::ffi::c_long) {
        // SAFETY: both functions only read or store an integer in mimalloc's
        // option table, from any thread at any time; the allocator is linked
        // in (`GLOBAL`).
        unsafe { mi_option_set(option, value) }
    }

    /// One of mimalloc's options as it stands.
    #[cfg(test)]
    pub fn get(option: std::ffi::c_int) -> std::ffi::c_long {
        // SAFETY: as in `set`.
        unsafe { mi_option_get(option) }
    }
}

/// Tunes the allocator before the work starts, unless the environment
/// already says (`MIMALLOC_PURGE_DELAY`, which mimalloc reads itself).
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        mimalloc_options::set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

#[derive(Debug, Parser)]
#[command(name = "andon", version, about = "Andon: where users struggle in production, and why")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the OTLP receivers, the store and the API.
    Serve(ServeArgs),
    /// Start a server fed by the simulated shop with injected faults, find them,
    /// open their incidents, and keep live traffic flowing until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Run read-only SQL over the spans of a running server.
    Query(query_cli::QueryArgs),
    /// Import OTLP JSON lines files.
    Import(import::ImportArgs),
    /// Run every detector over a past range (a backtest) on a running server.
    Analyze(findings_cli::AnalyzeArgs),
    /// List findings, or show one with --id.
    Findings(findings_cli::FindingsArgs),
    /// List ticket drafts, show one, or approve or reject it (the human gate).
    Tickets(tickets_cli::TicketsArgs),
    /// Record a deploy and its gate evidence, or list the change lineage.
    Changes(changes_cli::ChangesArgs),
    /// Open an incident and run its root-cause analysis, list incidents, or show one's report.
    Incidents(incidents_cli::IncidentsArgs),
    /// Ask the investigation agent a question about production (needs `[llm]`).
    Ask(agents_cli::AskArgs),
    /// List the flight recorder's runs, or show one as a timeline of steps.
    Runs(agents_cli::RunsArgs),
    /// Re-execute a recorded run's deterministic steps and report any that differ.
    Replay(agents_cli::ReplayArgs),
    /// Roll up stored segments that have no `span_metrics` rollup (or, with
    /// --rebuild, every segment, and `sessions` from every span) in a data
    /// directory no server is using.
    Rollup(RollupArgs),
}

#[derive(Debug, clap::Args)]
struct RollupArgs {
    /// Configuration file (TOML): its data directory and segment attributes.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Delete every rollup first and roll every segment up again; rebuild
    /// `sessions` from every stored span.
    #[arg(long)]
    rebuild: bool,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// OTLP/gRPC address, HOST:PORT (port 0 picks a free port).
    #[arg(long)]
    otlp_grpc_addr: Option<String>,
    /// OTLP/HTTP address, HOST:PORT.
    #[arg(long)]
    otlp_http_addr: Option<String>,
    /// REST API address, HOST:PORT.
    #[arg(long)]
    api_addr: Option<String>,
    /// IP address every port listens on (for example 0.0.0.0).
    #[arg(long)]
    listen: Option<String>,
}

pub(crate) fn init_logging(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ANDON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("ANDON_")).collect();
    let mut raw = config::load(args.config.as_deref(), &vars)?;
    raw.apply(config::Overrides {
        data_dir: args.data_dir,
        otlp_grpc_addr: args.otlp_grpc_addr,
        otlp_http_addr: args.otlp_http_addr,
        api_addr: args.api_addr,
        listen: args.listen,
    });
    let config = raw.validate()?;
    init_logging(config.log_json, &config.log_level);
    runtime()?.block_on(serve::run(config))
}

fn rollup(args: RollupArgs) -> anyhow::Result<()> {
    let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with("ANDON_")).collect();
    let mut raw = config::load(args.config.as_deref(), &vars)?;
    raw.apply(config::Overrides { data_dir: args.data_dir, ..config::Overrides::default() });
    let config = raw.validate()?;
    init_logging(false, "warn");
    let store = andon_store::Store::open(config.store)?;
    if args.rebuild {
        store.drop_rollups()?;
    }
    let started = std::time::Instant::now();
    let n = store.roll_up_missing(usize::MAX)?;
    let sessions = if args.rebuild || !store.sessions_ready() { Some(store.rebuild_sessions()?) } else { None };
    store.close()?;
    println!("rolled up {n} segments in {:.1} s", started.elapsed().as_secs_f64());
    if let Some(rows) = sessions {
        println!("rebuilt sessions: {rows} rows of finalized sessions");
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("andon").build()?)
}

fn main() -> ExitCode {
    tune_allocator();
    andon_model::install_tls_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Query(args) => runtime().and_then(|rt| rt.block_on(query_cli::run(args))),
        Command::Analyze(args) => runtime().and_then(|rt| rt.block_on(findings_cli::analyze(args))),
        Command::Findings(args) => runtime().and_then(|rt| rt.block_on(findings_cli::findings(args))),
        Command::Tickets(args) => runtime().and_then(|rt| rt.block_on(tickets_cli::run(args))),
        Command::Changes(args) => runtime().and_then(|rt| rt.block_on(changes_cli::run(args))),
        Command::Incidents(args) => runtime().and_then(|rt| rt.block_on(incidents_cli::run(args))),
        Command::Ask(args) => runtime().and_then(|rt| rt.block_on(agents_cli::ask(args))),
        Command::Runs(args) => runtime().and_then(|rt| rt.block_on(agents_cli::runs(args))),
        Command::Replay(args) => runtime().and_then(|rt| rt.block_on(agents_cli::replay(args))),
        Command::Rollup(args) => rollup(args),
        Command::Import(args) => {
            init_logging(false, "warn");
            runtime().and_then(|rt| rt.block_on(import::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_tuned_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // mimalloc's own default for its purge delay (1,000 ms in v3; its
        // neighbours in the enum default to 1 and 0): the index is that option.
        assert_eq!(mimalloc_options::get(MI_OPTION_PURGE_DELAY), 1_000);
        tune_allocator();
        assert_eq!(mimalloc_options::get(MI_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
    }
}
