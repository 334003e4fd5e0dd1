//! Helpers for the end-to-end tests in `tests/tests/`: build and start the real
//! `andon` binary on free ports and a fresh data directory, talk to it, stop it
//! gracefully or kill it.

pub mod browser;
pub mod github_twin;
pub mod llm_twin;
pub mod moto;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of the `andon` binary, built once per test process.
pub fn andon_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("andon"))
}

/// Path of the `andon-fixtures` binary (the simulated shop), built once per test process.
pub fn fixtures_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("andon-fixtures"))
}

fn build_bin(bin: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<bin>
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    // `--workspace`, as the test build has: the same packages resolve the same
    // features, so this reuses the binary that build made (see tests/Cargo.toml).
    build.args(["build", "--quiet", "--workspace", "--bin", bin]).current_dir(workspace_root());
    // Without the variables cargo set for this test process: build scripts
    // that watch them (ring's does) would run again, and everything built on
    // them would be rebuilt, once here and again by the next `cargo test`.
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(k, "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR")
        {
            build.env_remove(k);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        // Benchmarks measure optimised binaries.
        build.arg("--release");
    }
    assert!(build.status().expect("cargo runs").success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// Simulates the shop with `andon-fixtures simulate` into `out`, ending at
/// 2026-11-20T12:00:00Z (fixed-date history, the same on every run).
pub fn simulate(out: &Path, scenario: &str, hours: u32, rate: u32, seed: u64) {
    let done = Command::new(fixtures_bin())
        .args(["simulate", "--scenario", scenario, "--hours", &hours.to_string(), "--rate", &rate.to_string()])
        .args(["--seed", &seed.to_string(), "--end", "2026-11-20T12:00:00Z", "--out"])
        .arg(out)
        .output()
        .expect("andon-fixtures runs");
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
}

/// Sets the title of the change to `version` in a file of change events
/// (wherever it is nested), to plant text a test must find redacted.
pub fn retitle_change(file: &Path, version: &str, title: &str) {
    fn walk(v: &mut serde_json::Value, version: &str, title: &str) {
        match v {
            serde_json::Value::Object(o) if o.get("version").is_some_and(|v| v == version) => {
                o.insert("title".into(), serde_json::Value::String(title.to_owned()));
            }
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| walk(v, version, title)),
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| walk(v, version, title)),
            _ => {}
        }
    }
    let mut changes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("changes file")).expect("changes JSON");
    walk(&mut changes, version, title);
    std::fs::write(file, changes.to_string()).expect("changes file written");
}

/// The planted title of the deploy in [`latency_shop`]: a person's address,
/// which must never leave the server.
pub const PLANTED_TITLE: &str = "Cache quotes (reported by jane.doe@example.com from 203.0.113.7)";

/// The shop's deploy-latency run (2 hours, seed 7) simulated into `shop`,
/// imported into `server`, and its deploys posted, pricing 7.4.0's PR titled
/// [`PLANTED_TITLE`]. Returns the ground truth with its start and end.
pub fn latency_shop(
    server: &Server,
    shop: &Path,
) -> (serde_json::Value, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    simulate(shop, "latency", 2, 1, 7);
    server.import(&shop.join("spans.jsonl"));
    let changes = shop.join("changes.json");
    retitle_change(&changes, "7.4.0", PLANTED_TITLE);
    server.add_changes(&changes);
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shop.join("ground_truth.json")).expect("ground truth"))
            .expect("ground truth JSON");
    let time =
        |k: &str| chrono::DateTime::parse_from_rfc3339(truth[k].as_str().expect("a time")).expect("RFC 3339").to_utc();
    let (start, end) = (time("start"), time("end"));
    (truth, start, end)
}

pub fn workspace_root() -> PathBuf {
    // Read at run time: cargo does not rebuild a test binary when the checkout moves,
    // so a compile-time path can name a clone that is gone.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    Path::new(&manifest).parent().expect("workspace root").to_path_buf()
}

/// `shared/` next to the repository, where development data lives.
pub fn shared_dir() -> PathBuf {
    workspace_root().join("..").join("shared")
}

/// The setting every test server is started with (see [`Server::start`]).
pub const RETENTION_ENV: &str = "ANDON_STORAGE_RETENTION_HOURS";

/// A running `andon serve`.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// The `andon` binary it runs.
    bin: PathBuf,
    pub grpc: String,
    pub http: String,
    pub api: String,
    pub data_dir: PathBuf,
    extra_env: Vec<(String, String)>,
    config: Option<PathBuf>,
}

impl Server {
    /// Starts a server on free loopback ports with a data dir of its own, with
    /// retention off: fixed-date test data is never deleted, whatever the date.
    pub fn start(data_dir: &Path) -> Server {
        Self::start_with_env(data_dir, &[])
    }

    /// Starts a server with `ANDON_*` settings in its environment.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let extra_env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Self::spawn(andon_bin(), data_dir, extra_env, None)
    }

    /// Starts another build of `andon` (`bin`), as [`Server::start_with_env`]
    /// does: for benchmarks that compare two builds side by side.
    pub fn start_bin_with_env(bin: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let extra_env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Self::spawn(bin, data_dir, extra_env, None)
    }

    /// Starts a server with a configuration file (written beside the data
    /// directory) and `ANDON_*` settings in its environment.
    pub fn start_with_config(data_dir: &Path, toml: &str, env: &[(&str, &str)]) -> Server {
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, toml).expect("config written");
        let extra_env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Self::spawn(andon_bin(), data_dir, extra_env, Some(path))
    }

    fn spawn(bin: &Path, data_dir: &Path, extra_env: Vec<(String, String)>, config: Option<PathBuf>) -> Server {
        let mut cmd = Command::new(bin);
        // Every test server has an explicit retention. Tests replay fixed-date
        // history (`--end 2026-11-20T12:00:00Z`) so that their data is the same on
        // every run; under the default seven-day retention that history would be
        // deleted by the server a week after the test was written. Retention is
        // off unless a test sets `ANDON_STORAGE_RETENTION_HOURS` itself, and then
        // its data must be computed from the clock.
        cmd.env(RETENTION_ENV, "0");
        cmd.args(["serve", "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0"])
            .args(["--api-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("ANDON_LOG", std::env::var("ANDON_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &extra_env {
            cmd.env(k, v);
        }
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("andon starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).expect("andon prints its listening line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing in {line:?}"))
                .to_owned()
        };
        assert!(line.starts_with("listening "), "unexpected first line {line:?}");
        Server {
            bin: bin.to_path_buf(),
            grpc: field("otlp-grpc"),
            http: field("otlp-http"),
            api: field("api"),
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            extra_env,
            config,
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "andon exited with {status} after SIGTERM");
                    return;
                }
                assert!(Instant::now() < deadline, "andon did not stop within 60s of SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory (new ports).
    pub fn restart(&mut self) {
        self.stop();
        *self = Self::spawn(&self.bin.clone(), &self.data_dir.clone(), self.extra_env.clone(), self.config.clone());
    }

    /// Starts it again after a kill.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "respawn after kill or stop");
        *self = Self::spawn(&self.bin.clone(), &self.data_dir.clone(), self.extra_env.clone(), self.config.clone());
    }

    /// Runs SQL through `POST /api/v1/query`; panics on an error answer.
    pub fn query(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        self.query_as(None, sql)
    }

    pub fn query_as(&self, tenant: Option<&str>, sql: &str) -> Vec<Vec<serde_json::Value>> {
        let (status, body) = self.query_raw(tenant, sql);
        assert_eq!(status, 200, "query {sql:?} failed: {body}");
        body["rows"].as_array().expect("rows").iter().map(|r| r.as_array().expect("row").clone()).collect()
    }

    pub fn query_raw(&self, tenant: Option<&str>, sql: &str) -> (u16, serde_json::Value) {
        let client = reqwest::blocking_client();
        let mut req = client.post(self.api_url("/api/v1/query")).json(&serde_json::json!({ "sql": sql }));
        if let Some(t) = tenant {
            req = req.header("x-scope-orgid", t);
        }
        let resp = req.send().expect("api answers");
        let status = resp.status().as_u16();
        (status, resp.json().expect("json body"))
    }

    /// `GET` an API path: the status and the JSON body.
    /// Imports an OTLP JSON file with `andon import` over OTLP/HTTP.
    pub fn import(&self, file: &Path) {
        let out = Command::new(andon_bin())
            .args(["import", "--endpoint", &self.http_url("")])
            .arg(file)
            .output()
            .expect("andon import runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Posts a file of change events with `andon changes add`.
    pub fn add_changes(&self, file: &Path) {
        let out = Command::new(andon_bin())
            .args(["changes", "add", "--server", &self.api_url(""), "--file"])
            .arg(file)
            .output()
            .expect("andon changes add runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = reqwest::blocking_client().get(self.api_url(path)).send().expect("api answers");
        (resp.status().as_u16(), resp.json().expect("json body"))
    }

    /// `POST` JSON to an API path: the status and the JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = reqwest::blocking_client().post(self.api_url(path)).json(body).send().expect("api answers");
        (resp.status().as_u16(), resp.json().expect("json body"))
    }

    /// Exports `n` spans of a new trace of `cart` over OTLP/HTTP (protobuf),
    /// without a token: the status, and whether the answer says when to retry.
    pub fn export_spans(&self, seed: u64, n: u64) -> (u16, bool) {
        use prost::Message as _;
        let body = otlp::request("cart", seed, n, otlp::now_ns()).encode_to_vec();
        let resp = reqwest::blocking_client()
            .post(self.http_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .expect("otlp/http answers");
        (resp.status().as_u16(), resp.headers.get("retry-after").is_some())
    }

    /// A single number from SQL such as `SELECT count(*) FROM spans`.
    pub fn count(&self, sql: &str) -> i64 {
        let rows = self.query(sql);
        rows[0][0].as_i64().unwrap_or_else(|| panic!("{sql:?} gave {rows:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small blocking HTTP client built on reqwest's async one, for test threads.
pub mod reqwest {
    pub use ::reqwest::*;

    pub fn blocking_client() -> BlockingClient {
        BlockingClient
    }

    fn client() -> ::reqwest::Client {
        andon_model::install_tls_provider();
        ::reqwest::Client::new()
    }

    #[derive(Debug, Clone, Copy)]
    pub struct BlockingClient;

    impl BlockingClient {
        pub fn post(&self, url: String) -> RequestBuilder {
            RequestBuilder { inner: client().post(url) }
        }
        pub fn get(&self, url: String) -> RequestBuilder {
            RequestBuilder { inner: client().get(url) }
        }
        pub fn put(&self, url: String) -> RequestBuilder {
            RequestBuilder { inner: client().put(url) }
        }
        pub fn delete(&self, url: String) -> RequestBuilder {
            RequestBuilder { inner: client().delete(url) }
        }
    }

    #[derive(Debug)]
    pub struct RequestBuilder {
        inner: ::reqwest::RequestBuilder,
    }

    impl RequestBuilder {
        pub fn header(self, k: &str, v: &str) -> Self {
            Self { inner: self.inner.header(k, v) }
        }
        pub fn json(self, v: &serde_json::Value) -> Self {
            Self { inner: self.inner.json(v) }
        }
        pub fn body(self, b: Vec<u8>) -> Self {
            Self { inner: self.inner.body(b) }
        }
        pub fn send(self) -> ::reqwest::Result<BlockingResponse> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let resp = self.inner.send().await?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?.to_vec();
                Ok(BlockingResponse { status, headers, body })
            })
        }
    }

    #[derive(Debug)]
    pub struct BlockingResponse {
        status: StatusCode,
        pub headers: header::HeaderMap,
        pub body: Vec<u8>,
    }

    impl BlockingResponse {
        pub fn status(&self) -> StatusCode {
            self.status
        }
        pub fn json(&self) -> serde_json::Result<serde_json::Value> {
            serde_json::from_slice(&self.body)
        }
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Builders for OTLP requests with known content.
pub mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    pub fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    pub fn kv_int(k: &str, v: i64) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Value::IntValue(v)) }), ..Default::default() }
    }

    /// Now, in Unix nanoseconds.
    pub fn now_ns() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }

    /// A trace id that is unique to `(seed, n)`.
    pub fn trace_id(seed: u64, n: u64) -> Vec<u8> {
        let mut id = seed.to_be_bytes().to_vec();
        id.extend_from_slice(&(n + 1).to_be_bytes());
        id
    }

    pub fn span_id(n: u64) -> Vec<u8> {
        (n + 1).to_be_bytes().to_vec()
    }

    pub fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// `n` server spans of `service`, each its own trace, starting at `start_ns`.
    pub fn request(service: &str, seed: u64, n: u64, start_ns: u64) -> ExportTraceServiceRequest {
        let spans = (0..n)
            .map(|i| Span {
                trace_id: trace_id(seed, i),
                span_id: span_id(i),
                name: "GET /cart".into(),
                kind: 2,
                start_time_unix_nano: start_ns + i * 1_000_000,
                end_time_unix_nano: start_ns + i * 1_000_000 + 5_000_000,
                attributes: vec![
                    kv("http.route", "/cart"),
                    kv_int("http.response.status_code", 200),
                    kv("session.id", &format!("s{}", i % 7)),
                ],
                status: Some(Status { code: 0, message: String::new() }),
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", service), kv("service.version", "1.2.3")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }
}
