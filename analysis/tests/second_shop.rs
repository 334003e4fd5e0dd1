//! A shop unlike the simulated one, built span by span as real OpenTelemetry
//! SDKs would export it: a storefront app whose root client spans carry the
//! device (`os.type`, `browser.mobile`), a gateway and two services whose own
//! resources say `os.type=linux` (as the SDKs' OS resource detectors add it),
//! other routes, and journeys where checkout is a rare path behind browsing.
//! Each test is named for a failure class the detectors once had here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use andon_analysis::{AnalysisConfig, Analyzer, PassReport, Windows};
use andon_fixtures::rng::Rng;
use andon_ingest::{IngestConfig, Ingestor};
use andon_model::clock::SystemClock;
use andon_model::{Finding, Tenant};
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Duration, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use serde_json::json;

const HOURS: f64 = 4.0;
/// Sessions per second.
const RATE: f64 = 2.0;
/// Faults start here, as a fraction of the run.
const ONSET: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The Android app retries item pages that now fail for it; iOS and the
    /// web never retry.
    AndroidRetries,
    /// Mobile sessions fail at the shipping step of checkout and leave.
    MobileCheckout,
    /// Adding to the bag fails, only for Android sessions served in eu-west-1.
    AndroidInEu,
    /// Catalog's process is starved (CPU contention under a global
    /// interpreter lock): requests wait 40 ms before its server span starts,
    /// so its own spans do not move and only its callers' client spans do.
    CatalogSlowToAccept,
    /// Catalog's own work takes 40 ms longer.
    CatalogSlow,
    /// No fault: four times the sessions, and shoppers take five to seven
    /// minutes over the payment form, from start to end of the run alike.
    SlowShoppers,
}

/// (os.type, browser.mobile, weight)
const DEVICES: &[(&str, bool, f64)] =
    &[("windows", false, 0.35), ("darwin", false, 0.15), ("android", true, 0.3), ("ios", true, 0.2)];
const REGIONS: &[&str] = &["us-east-2", "eu-west-1"];

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

/// A process's resource: the app's carries the device, a backend's its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proc {
    App(usize),
    Backend(&'static str, usize),
}

impl Proc {
    fn resource(self) -> Resource {
        let attributes = match self {
            Proc::App(d) => vec![
                s("service.name", "storefront"),
                s("service.version", "2026.11.3"),
                s("os.type", DEVICES[d].0),
                kv("browser.mobile", Value::BoolValue(DEVICES[d].1)),
                s("telemetry.sdk.language", "webjs"),
            ],
            Proc::Backend(name, r) => vec![
                s("service.name", name),
                s("service.version", "4.2.0"),
                s("os.type", "linux"),
                s("host.arch", "amd64"),
                s("cloud.region", REGIONS[r]),
                s("telemetry.sdk.language", "python"),
            ],
        };
        Resource { attributes, ..Default::default() }
    }
}

/// A session's client: its id, device and the region serving it.
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    session: &'a str,
    device: usize,
    region: usize,
}

struct Shop {
    rng: Rng,
    fault: Fault,
    onset: u64,
    spans: BTreeMap<Proc, Vec<Span>>,
}

fn ns(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap() as u64
}

impl Shop {
    #[expect(clippy::too_many_arguments, reason = "a span's fields, in the order OTLP gives them")]
    fn span(
        &mut self,
        proc: Proc,
        trace: [u8; 16],
        parent: Option<[u8; 8]>,
        name: &str,
        kind: span::SpanKind,
        t: u64,
        ms: f64,
        error: bool,
        attributes: Vec<KeyValue>,
    ) -> [u8; 8] {
        let id = self.rng.id64();
        let status = Status { code: if error { 2 } else { 0 }, ..Default::default() };
        self.spans.entry(proc).or_default().push(Span {
            trace_id: trace.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: t,
            end_time_unix_nano: t + (ms * 1e6) as u64,
            attributes,
            status: Some(status),
            ..Default::default()
        });
        id
    }

    /// One page request: the app's client span, the gateway's server span,
    /// and the service behind it. Returns whether it failed.
    fn page(&mut self, who: &Who<'_>, method: &str, route: &str, t: u64, resend: u32) -> bool {
        let Who { session, device, region } = *who;
        let trace = self.rng.id128();
        let current = t >= self.onset;
        let (os, mobile, _) = DEVICES[device];
        let fails = match self.fault {
            Fault::AndroidRetries if current && os == "android" && route == "/items/{id}" => 0.45,
            Fault::MobileCheckout if current && mobile && route == "/checkout/shipping" => 0.35,
            Fault::AndroidInEu if current && os == "android" && REGIONS[region] == "eu-west-1" && route == "/bag" => {
                0.4
            }
            _ => 0.01,
        };
        let error = self.rng.chance(fails);
        let backend = if route.starts_with("/checkout") || route == "/bag" { "orders" } else { "catalog" };
        let mut inner_ms = self.rng.lognormal(18.0, 0.4);
        if self.fault == Fault::CatalogSlow && current && backend == "catalog" {
            inner_ms += self.rng.lognormal(40.0, 0.2);
        }
        let accept_ms = if self.fault == Fault::CatalogSlowToAccept && current && backend == "catalog" {
            self.rng.lognormal(40.0, 0.2)
        } else {
            0.0
        };
        let gateway_ms = inner_ms + accept_ms + self.rng.lognormal(4.0, 0.3);
        let client_ms = gateway_ms + self.rng.lognormal(30.0, 0.3);
        let mut client_attrs = vec![s("session.id", session), s("http.request.method", method)];
        if resend > 0 {
            client_attrs.push(kv("http.request.resend_count", Value::IntValue(i64::from(resend))));
        }
        let root = self.span(
            Proc::App(device),
            trace,
            None,
            method,
            span::SpanKind::Client,
            t,
            client_ms,
            error,
            client_attrs,
        );
        let status = if error { 503 } else { 200 };
        let server_attrs = vec![
            s("session.id", session),
            s("http.route", route),
            s("http.request.method", method),
            kv("http.response.status_code", Value::IntValue(status)),
        ];
        let t1 = t + 12_000_000;
        let gw = self.span(
            Proc::Backend("gateway", region),
            trace,
            Some(root),
            &format!("{method} {route}"),
            span::SpanKind::Server,
            t1,
            gateway_ms,
            error,
            server_attrs,
        );
        let inner = format!("/v2{route}");
        let call = self.span(
            Proc::Backend("gateway", region),
            trace,
            Some(gw),
            method,
            span::SpanKind::Client,
            t1 + 1_000_000,
            inner_ms + accept_ms + 1.0,
            error,
            vec![s("session.id", session), s("http.request.method", method)],
        );
        self.span(
            Proc::Backend(backend, region),
            trace,
            Some(call),
            &format!("{method} {inner}"),
            span::SpanKind::Server,
            t1 + 1_500_000 + (accept_ms * 1e6) as u64,
            inner_ms,
            error,
            vec![
                s("session.id", session),
                s("http.route", &inner),
                s("http.request.method", method),
                kv("http.response.status_code", Value::IntValue(status)),
            ],
        );
        error
    }

    /// Requests a page; the Android app retries a failed GET up to twice.
    /// Returns whether it finally failed, and when the session goes on.
    fn visit(&mut self, who: &Who<'_>, method: &str, route: &str, mut t: u64) -> (bool, u64) {
        let mut failed = self.page(who, method, route, t, 0);
        let mut attempt = 0;
        while failed && DEVICES[who.device].0 == "android" && method == "GET" && attempt < 2 {
            attempt += 1;
            t += (self.rng.range(0.5, 2.0) * 1e9) as u64;
            failed = self.page(who, method, route, t, attempt);
        }
        (failed, t + (self.rng.range(4.0, 40.0) * 1e9) as u64)
    }

    fn session(&mut self, n: u64, start: u64) {
        let session = format!("s-{n:08x}");
        let device = self.rng.weighted(&DEVICES.iter().map(|d| d.2).collect::<Vec<_>>());
        let region = self.rng.below(REGIONS.len() as u64) as usize;
        let who = Who { session: &session, device, region };
        let mut t = start;
        let searching = self.rng.chance(0.2);
        let (_, next) = self.visit(&who, "GET", if searching { "/search" } else { "/" }, t);
        t = next;
        for _ in 0..1 + self.rng.below(4) {
            let (_, next) = self.visit(&who, "GET", "/items/{id}", t);
            t = next;
        }
        // About one session in nine checks out, through four steps.
        if !self.rng.chance(0.11) {
            return;
        }
        for (method, route) in [
            ("POST", "/bag"),
            ("POST", "/checkout/shipping"),
            ("POST", "/checkout/payment"),
            ("GET", "/checkout/receipt"),
        ] {
            if self.fault == Fault::SlowShoppers && route == "/checkout/payment" {
                t += (self.rng.range(300.0, 420.0) * 1e9) as u64;
            }
            let (failed, next) = self.visit(&who, method, route, t);
            t = next;
            if failed || !self.rng.chance(0.92) {
                return;
            }
        }
    }

    fn take(&mut self) -> ExportTraceServiceRequest {
        let resource_spans = std::mem::take(&mut self.spans)
            .into_iter()
            .map(|(proc, spans)| ResourceSpans {
                resource: Some(proc.resource()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "opentelemetry.instrumentation.asgi".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }
}

struct Loaded {
    _dir: tempfile::TempDir,
    engine: QueryEngine,
    rt: tokio::runtime::Runtime,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn load(fault: Fault, hours: f64, seed: u64) -> Loaded {
    load_arriving(fault, hours, seed, None).0
}

/// Loads the run; with `arriving_from`, the traces that start after that
/// fraction of the run are still arriving: they come after everything else,
/// after the time returned, and without catalog's spans (still in its
/// exporter's batch).
fn load_arriving(fault: Fault, hours: f64, seed: u64, arriving_from: Option<f64>) -> (Loaded, Option<DateTime<Utc>>) {
    let end = DateTime::parse_from_rfc3339("2026-11-20T20:00:00Z").unwrap().with_timezone(&Utc);
    let start = end - Duration::seconds((hours * 3600.0) as i64);
    let onset = ns(start) + ((ns(end) - ns(start)) as f64 * ONSET) as u64;
    let mut shop = Shop { rng: Rng::new(seed), fault, onset, spans: BTreeMap::new() };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.durability = Durability::None;
    let store = Store::open(cfg).unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tenant = Tenant::default_tenant();
    let rate = if fault == Fault::SlowShoppers { 4.0 * RATE } else { RATE };
    let sessions = (hours * 3600.0 * rate) as u64;
    let gap = (ns(end) - ns(start) - 1_800_000_000_000) / sessions;
    let hold = arriving_from.map(|f| ns(start) + ((ns(end) - ns(start)) as f64 * f) as u64);
    let mut arriving: BTreeMap<Proc, Vec<Span>> = BTreeMap::new();
    for n in 0..sessions {
        let jitter = shop.rng.below(gap);
        shop.session(n, ns(start) + n * gap + jitter);
        if let Some(hold) = hold {
            let late: std::collections::HashSet<Vec<u8>> = shop
                .spans
                .iter()
                .filter(|(p, _)| matches!(p, Proc::App(_)))
                .flat_map(|(_, v)| v.iter().filter(|s| s.start_time_unix_nano >= hold).map(|s| s.trace_id.clone()))
                .collect();
            for (proc, spans) in shop.spans.iter_mut() {
                let (keep, go): (Vec<Span>, Vec<Span>) =
                    std::mem::take(spans).into_iter().partition(|s| !late.contains(&s.trace_id));
                *spans = keep;
                if !matches!(proc, Proc::Backend("catalog", _)) {
                    arriving.entry(*proc).or_default().extend(go);
                }
            }
        }
        if n % 200 == 199 || n + 1 == sessions {
            let req = shop.take();
            rt.block_on(ingestor.export(&tenant, req)).unwrap();
        }
        if n % 4000 == 3999 {
            store.flush().unwrap();
        }
    }
    let settled = hold.map(|_| {
        store.flush().unwrap();
        let at = Utc::now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        shop.spans = std::mem::take(&mut arriving);
        let req = shop.take();
        rt.block_on(ingestor.export(&tenant, req)).unwrap();
        at
    });
    store.flush().unwrap();
    let engine = QueryEngine::new(store, QueryLimits::default(), 2).unwrap();
    (Loaded { _dir: dir, engine, rt, start, end }, settled)
}

fn analyze(l: &Loaded, w: Windows) -> PassReport {
    let analyzer = Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap();
    l.rt.block_on(analyzer.pass(&Tenant::default_tenant(), w)).unwrap()
}

/// The baseline is the first 40% of the run, the current window the last 20%,
/// all after the onset at 50%.
fn fault_pass(fault: Fault) -> Vec<Finding> {
    let l = load(fault, HOURS, 5);
    let span = l.end - l.start;
    let at = |f: f64| l.start + Duration::milliseconds((span.num_milliseconds() as f64 * f) as i64);
    analyze(&l, Windows { baseline_start: l.start, baseline_end: at(0.4), split: at(0.8), end: l.end }).findings
}

fn describe(f: &Finding) -> String {
    format!(
        "{} {} {} {:?} effect={} p={:.1e} {:?} → {:?} linked={:?}",
        f.kind,
        f.service,
        f.operation,
        f.segment,
        f.effect,
        f.p_value,
        f.baseline,
        f.current,
        f.evidence.linked.iter().map(|l| format!("{} {} {}", l.kind, l.service, l.operation)).collect::<Vec<_>>()
    )
}

fn segment(pairs: &[(&str, serde_json::Value)]) -> BTreeMap<String, serde_json::Value> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

#[test]
fn retries_only_android_makes_are_reported_for_android_not_for_mobile() {
    let findings = fault_pass(Fault::AndroidRetries);
    let all: Vec<String> = findings.iter().map(describe).collect();
    // The failures start in catalog, under the gateway's page: the retries are
    // reported where they start, with the gateway's linked under them.
    let retry =
        findings.iter().find(|f| f.kind.as_str() == "retry").unwrap_or_else(|| panic!("no retry finding: {all:#?}"));
    assert_eq!((retry.service.as_str(), retry.operation.as_str()), ("catalog", "GET /v2/items/{id}"), "{all:#?}");
    assert_eq!(retry.segment, segment(&[("os.type", json!("android"))]), "{all:#?}");
    assert!(
        findings
            .iter()
            .all(|f| !f.segment.contains_key("browser.mobile") && f.segment.get("os.type") != Some(&json!("linux"))),
        "a wider segment, or the servers' own OS: {all:#?}"
    );
    assert_eq!(findings.len(), 1, "{all:#?}");
}

#[test]
fn a_checkout_drop_off_is_found_though_checkout_is_not_the_most_common_journey() {
    let findings = fault_pass(Fault::MobileCheckout);
    let all: Vec<String> = findings.iter().map(describe).collect();
    let drop = findings
        .iter()
        .find(|f| f.kind.as_str() == "drop_off")
        .unwrap_or_else(|| panic!("no drop-off finding: {all:#?}"));
    assert_eq!((drop.service.as_str(), drop.operation.as_str()), ("gateway", "POST /checkout/shipping"), "{all:#?}");
    assert_eq!(drop.segment, segment(&[("browser.mobile", json!(true))]), "{all:#?}");
    let (b, c) = (drop.baseline["conversion"].as_f64().unwrap(), drop.current["conversion"].as_f64().unwrap());
    assert!(b > 0.85 && c < 0.7, "shipping → payment {b} → {c}");
    assert!(
        drop.evidence.details["flow"].as_str().unwrap().contains("/checkout/payment"),
        "{:?}",
        drop.evidence.details
    );
    // The errors at that step explain it: they are its cause, not a finding of their own.
    let cause = drop.evidence.cause.as_ref().expect("the failures behind it");
    assert_eq!((cause.service.as_str(), cause.operation.as_str()), ("orders", "POST /v2/checkout/shipping"));
    assert_eq!(findings.len(), 1, "{all:#?}");
}

#[test]
fn an_effect_confined_to_a_pair_of_values_is_reported_for_the_pair() {
    let findings = fault_pass(Fault::AndroidInEu);
    let all: Vec<String> = findings.iter().map(describe).collect();
    // Sessions whose add-to-bag fails leave: the drop-off is what users see,
    // with the failures in orders as its cause.
    let drop = findings
        .iter()
        .find(|f| f.kind.as_str() == "drop_off")
        .unwrap_or_else(|| panic!("no drop-off finding: {all:#?}"));
    assert_eq!((drop.service.as_str(), drop.operation.as_str()), ("gateway", "POST /bag"), "{all:#?}");
    assert_eq!(
        drop.segment,
        segment(&[("cloud.region", json!("eu-west-1")), ("os.type", json!("android"))]),
        "{all:#?}"
    );
    let cause = drop.evidence.cause.as_ref().expect("the failures behind it");
    assert_eq!((cause.service.as_str(), cause.operation.as_str()), ("orders", "POST /v2/bag"));
    assert_eq!(findings.len(), 1, "{all:#?}");
}

#[test]
fn a_service_slow_to_take_requests_is_named_though_its_own_spans_do_not_move() {
    let findings = fault_pass(Fault::CatalogSlowToAccept);
    let all: Vec<String> = findings.iter().map(describe).collect();
    let slow: Vec<&Finding> = findings.iter().filter(|f| f.kind.as_str() == "latency_regression").collect();
    assert!(!slow.is_empty(), "no latency finding: {all:#?}");
    // The pages are slower at the gateway, whose own work did not grow: the
    // wait is on the hop into catalog, so catalog is the cause.
    for f in &slow {
        let cause = f.evidence.cause.as_ref().unwrap_or_else(|| panic!("no cause named: {all:#?}"));
        let why = f.evidence.details["cause_reason"].as_str().unwrap();
        assert_eq!(cause.service, "catalog", "{all:#?}\n{why}");
        assert!(why.contains("(gateway → catalog)"), "the wait is on the hop into catalog: {why}");
    }
    assert!(findings.iter().all(|f| f.kind.as_str() == "latency_regression"), "{all:#?}");
}

#[test]
fn a_pass_while_traces_are_still_arriving_judges_only_those_that_have_settled() {
    // Catalog is slow to take requests: the gateway's calls wait 40 ms before
    // catalog's server span starts. The later half of the current window's
    // traces are still arriving: the app's and the gateway's spans
    // are here, catalog's are still in its exporter's batch, so the gateway's
    // calls there wait on nothing traced.
    // Sessions start until half an hour before the end: this is about the
    // middle of the current window's traffic.
    const ARRIVING: f64 = 0.84;
    let (l, settled) = load_arriving(Fault::CatalogSlowToAccept, HOURS, 5, Some(ARRIVING));
    let span = l.end - l.start;
    let at = |f: f64| l.start + Duration::milliseconds((span.num_milliseconds() as f64 * f) as i64);
    let w = Windows { baseline_start: l.start, baseline_end: at(0.4), split: at(0.8), end: l.end };
    let analyzer = Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap();
    let tenant = Tenant::default_tenant();
    let findings = l.rt.block_on(analyzer.pass_settled(&tenant, w, settled)).unwrap().findings;
    let all: Vec<String> = findings.iter().map(describe).collect();
    let slow: Vec<&Finding> = findings.iter().filter(|f| f.kind.as_str() == "latency_regression").collect();
    assert!(!slow.is_empty(), "no latency finding: {all:#?}");
    for f in &slow {
        let cause = f.evidence.cause.as_ref().unwrap_or_else(|| panic!("no cause named: {all:#?}"));
        assert_eq!(cause.service, "catalog", "{all:#?}");
    }
    // The localization read only the traces that had settled: those whose
    // request started before the arriving half.
    let current = andon_model::TimeWindow { start: w.split, end: w.end };
    let read = |settled: Option<DateTime<Utc>>| {
        let scope = andon_analysis::localize::Scope { settled, ..Default::default() };
        let limits = andon_analysis::localize::LocalizeLimits { traces: 1_000_000, fdr: 0.01 };
        let (loc, _) = l
            .rt
            .block_on(andon_analysis::localize::localize(&l.engine, &tenant, &current, &current, &scope, None, &limits))
            .unwrap();
        loc.traces.1
    };
    let complete = l.rt.block_on(l.engine.collect(
        Some(tenant.clone()),
        &format!(
            "SELECT count(DISTINCT trace_id) AS n FROM spans WHERE (parent_span_id IS NULL OR parent_span_id = '') \
             AND start_time >= {} AND start_time < {}",
            andon_store::sql::ts(w.split),
            andon_store::sql::ts(at(ARRIVING)),
        ),
    ));
    let complete = andon_store::sql::Rows::new(complete.unwrap().batches).iter().next().unwrap().u64("n") as usize;
    let (only_settled, everything) = (read(settled), read(None));
    assert_eq!(only_settled, complete, "of {everything} traces in the window");
    assert!(everything as f64 > complete as f64 * 1.3, "{everything} traces against {complete} settled");
}

#[test]
fn a_clean_day_of_the_second_shop_gives_no_finding() {
    let l = load(Fault::None, 12.0, 7);
    let mut found = Vec::new();
    let mut from = l.start + Duration::hours(3);
    while from < l.end {
        let to = (from + Duration::hours(1)).min(l.end);
        found.extend(analyze(&l, Windows::before(from, to, 3 * 3600)).findings.iter().map(describe));
        from = to;
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_window_that_keeps_only_ended_sessions_shows_no_drop_off_where_shoppers_take_minutes() {
    // A pass keeps a current session at a step only once it had the time to
    // go on (the session timeout, here 1,075 s of a 30-minute window, or a
    // step's horizon), so the current window holds the sessions that got there
    // early enough: few of those that pause six minutes before paying, most of
    // those that leave at shipping. Left uncorrected, conversion from shipping
    // to payment falls from 92% to about 80%; nothing changed, so nothing is
    // reported.
    let l = load(Fault::SlowShoppers, 2.5, 13);
    let config = AnalysisConfig { session_timeout_secs: 1075, ..AnalysisConfig::default() };
    let analyzer = Analyzer::new(l.engine.clone(), config).unwrap();
    // Sessions start until 30 minutes before the run's end.
    let to = l.end - Duration::minutes(30);
    let report =
        l.rt.block_on(analyzer.pass(&Tenant::default_tenant(), Windows::before(to - Duration::minutes(30), to, 3600)))
            .unwrap();
    assert!(report.flows.iter().any(|f| f.contains("/checkout/payment")), "{:?}", report.flows);
    let drops: Vec<String> =
        report.findings.iter().filter(|f| f.kind == andon_model::FindingKind::DropOff).map(describe).collect();
    assert!(drops.is_empty(), "{drops:#?}");
}

/// What a finding says, for comparing passes.
fn gist(f: &Finding) -> String {
    let cause = f.evidence.cause.as_ref().map(|c| format!("{} {}", c.service, c.operation)).unwrap_or_default();
    format!("{} {} {} {:?} cause={cause}", f.kind, f.service, f.operation, f.segment)
}

#[test]
fn a_pass_on_whole_minutes_reads_the_rollups_and_sessions_and_finds_what_the_spans_show() {
    for fault in [Fault::CatalogSlow, Fault::AndroidInEu, Fault::AndroidRetries] {
        let l = load(fault, HOURS, 11);
        let minute = |f: f64| {
            let t = l.start + Duration::seconds(((l.end - l.start).num_seconds() as f64 * f) as i64);
            andon_analysis::engine::floor_minute(t)
        };
        let w = Windows { baseline_start: minute(0.0), baseline_end: minute(0.4), split: minute(0.8), end: l.end };
        let tenant = Tenant::default_tenant();
        let run = |a: Analyzer| -> Vec<String> {
            let mut out: Vec<String> = l.rt.block_on(a.pass(&tenant, w)).unwrap().findings.iter().map(gist).collect();
            out.sort();
            out
        };
        let analyzer = || Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap();
        let rolled = run(analyzer());
        let spans = run(analyzer().reading_spans_only());
        assert!(!rolled.is_empty(), "{fault:?}: nothing found");
        assert_eq!(rolled, spans, "{fault:?}: rollups and spans disagree");
        // Without its sessions the same pass sees no session: it did read them;
        // rebuilt from the stored spans, they give the same findings again.
        // (A slower catalog changes no session.)
        let sessions = ["drop_off", "retry", "silent_recovery"];
        if fault != Fault::CatalogSlow {
            assert!(rolled.iter().any(|f| sessions.iter().any(|k| f.starts_with(k))), "{fault:?}: {rolled:?}");
            l.engine.store().drop_sessions().unwrap();
            let blind = run(analyzer());
            assert!(blind.iter().all(|f| !sessions.iter().any(|k| f.starts_with(k))), "{fault:?}: {blind:?}");
            l.engine.store().rebuild_sessions().unwrap();
            assert_eq!(run(analyzer()), rolled, "{fault:?}: sessions rebuilt from spans disagree");
        }
        // Without its rollups the same pass sees no request at all: it did read them.
        l.engine.store().drop_rollups().unwrap();
        let blind = run(analyzer());
        assert!(
            blind.iter().all(|f| !f.starts_with("latency_regression") && !f.starts_with("error_rate_regression")),
            "{fault:?}: {blind:?}"
        );
    }
}

#[test]
fn a_book_of_sampled_traces_answers_what_reading_them_again_would_until_one_receives_a_span() {
    use andon_analysis::localize::{LocalizeLimits, Scope, TraceBook, localize, localize_with};
    let l = load(Fault::CatalogSlowToAccept, HOURS, 5);
    let tenant = Tenant::default_tenant();
    let span = l.end - l.start;
    let at = |f: f64| l.start + Duration::milliseconds((span.num_milliseconds() as f64 * f) as i64);
    let baseline = andon_model::TimeWindow { start: l.start, end: at(0.4) };
    let current = andon_model::TimeWindow { start: at(0.8), end: l.end };
    let scope = Scope { through: Some("gateway".into()), ..Default::default() };
    let limits = LocalizeLimits { traces: 400, fdr: 0.01 };
    let read_with = |limits: &LocalizeLimits| {
        let (loc, _) = l.rt.block_on(localize(&l.engine, &tenant, &baseline, &current, &scope, None, limits)).unwrap();
        format!("{loc:?}")
    };
    let read = || read_with(&limits);
    let book = TraceBook::default();
    let booked_with = |limits: &LocalizeLimits| {
        book.turn(l.engine.store(), &tenant);
        let (loc, _) =
            l.rt.block_on(localize_with(&l.engine, &tenant, &baseline, &current, &scope, None, limits, Some(&book)))
                .unwrap();
        format!("{loc:?}")
    };
    let booked = || booked_with(&limits);
    let fresh = read();
    assert!(fresh.contains("catalog"), "{fresh}");
    assert_eq!(booked(), fresh);
    let (answered, first_read) = book.counts();
    assert_eq!(answered, 0);
    assert_eq!(first_read, 800, "400 traces a window, none kept yet");
    // The same windows again: every trace from the book, the same suspects.
    assert_eq!(booked(), fresh);
    assert_eq!(book.counts(), (800, 800));
    // Five traces a window: the book keeps each minute's first five, enough
    // for the first five of any run of minutes.
    let few = LocalizeLimits { traces: 5, fdr: 0.01 };
    assert_eq!(booked_with(&few), read_with(&few));
    assert_eq!(booked_with(&few), read_with(&few));
    assert_eq!(book.counts(), (800 + 20, 800), "the first five of each window are among the first 400");

    // Spans arrive late for the first trace the current window samples: the
    // gateway's call to a ledger service, and the ledger's server span.
    let q = format!(
        "SELECT trace_id, span_id, CAST(start_time AS BIGINT) AS t0 FROM spans WHERE service_name = 'gateway' \
         AND kind = 'server' AND start_time >= {} AND start_time < {} ORDER BY trace_id LIMIT 1",
        andon_store::sql::ts(current.start),
        andon_store::sql::ts(current.end),
    );
    let row = andon_store::sql::Rows::new(l.rt.block_on(l.engine.collect(Some(tenant.clone()), &q)).unwrap().batches);
    let row = row.iter().next().unwrap();
    let hex = |s: String| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    let t0 = row.i64("t0").unwrap() as u64;
    let trace: Vec<u8> = hex(row.str("trace_id").unwrap());
    let late = |parent: Vec<u8>, id: u8, kind: span::SpanKind, ms: u64| Span {
        trace_id: trace.clone(),
        span_id: vec![id; 8],
        parent_span_id: parent,
        name: "POST /v1/entries".into(),
        kind: kind as i32,
        start_time_unix_nano: t0 + 1_000_000,
        end_time_unix_nano: t0 + ms * 1_000_000,
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(Proc::Backend("gateway", 0).resource()),
                scope_spans: vec![ScopeSpans {
                    spans: vec![late(hex(row.str("span_id").unwrap()), 7, span::SpanKind::Client, 30)],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceSpans {
                resource: Some(Proc::Backend("ledger", 0).resource()),
                scope_spans: vec![ScopeSpans {
                    spans: vec![late(vec![7; 8], 8, span::SpanKind::Server, 29)],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    let ingestor = Ingestor::new(Arc::new(l.engine.store().clone()), Arc::new(SystemClock), IngestConfig::default());
    l.rt.block_on(ingestor.export(&tenant, req)).unwrap();
    let changed = read();
    assert_ne!(changed, fresh, "the late span changes what the trace says");
    // The book forgets that trace, reads it again, and answers with the rest.
    assert_eq!(booked(), changed);
    assert!(changed.contains("(\"gateway\", \"ledger\")"), "{changed}");
    assert_eq!(book.counts(), (820 + 799, 801));
}
