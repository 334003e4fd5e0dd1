//! The web UI in a real browser, against `andon demo`: every page loads and is
//! saved as a screenshot, a ticket approved through the UI arrives at the
//! GitHub twin, and a span attribute carrying `<script>` renders as text.
//! Also: forms without the browser's CSRF token are refused, and Ctrl-C stops
//! the demo cleanly and removes its temporary data.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use andon_tests::browser::{self, Browser};
use andon_tests::github_twin::GitHubTwin;
use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, andon_bin, otlp, wait_for, workspace_root};
use prost::Message;
use serde_json::{Value, json};

/// A running `andon demo`, its output read line by line.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    output: Vec<String>,
    api: String,
    http: String,
    data_dir: PathBuf,
}

impl Demo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut cmd = Command::new(andon_bin());
        cmd.arg("demo")
            .args(["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("andon demo starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo {
            child,
            lines,
            output: Vec::new(),
            api: String::new(),
            http: String::new(),
            data_dir: PathBuf::new(),
        };
        let first = demo.wait_line("andon demo: serving on ", Duration::from_secs(120));
        demo.data_dir = PathBuf::from(
            first.split("(data in ").nth(1).and_then(|s| s.strip_suffix(')')).expect("data dir in the first line"),
        );
        let ports = demo.wait_line("  otlp-grpc ", Duration::from_secs(10));
        let words: Vec<&str> = ports.split_whitespace().collect();
        demo.http = format!("http://{}", words[3]);
        demo.api = format!("http://{}", words[8]);
        demo
    }

    /// Waits for a line starting with `prefix` and returns it.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no line starting {prefix:?}; the demo printed:\n{}", self.output.join("\n")),
            }
        }
    }

    /// Ctrl-C, then the exit status.
    fn interrupt(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status().expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo did not stop within 2 minutes of Ctrl-C");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn get(&self, path: &str) -> Value {
        let resp = blocking_client().get(format!("{}{path}", self.api)).send().expect("api answers");
        assert!(resp.status().is_success(), "{path}: {}", resp.text());
        resp.json().expect("json")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshots() -> PathBuf {
    let dir = std::env::var_os("ANDON_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("ui-screenshots"));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// A span whose attributes, name and status message are markup meant to run.
fn hostile_span(trace_seed: u64) -> (Vec<u8>, String) {
    let mut req = otlp::request("storefront", trace_seed, 1, otlp::now_ns());
    let span = &mut req.resource_spans[0].scope_spans[0].spans[0];
    span.name = "<b>bold</b> GET /cart".into();
    span.attributes.push(otlp::kv("user.note", "<script>document.title='pwned';window.pwned=1</script>"));
    span.attributes.push(otlp::kv("<img src=x onerror=alert(1)>", "\"><svg onload=alert(2)>"));
    let id = otlp::hex(&span.trace_id);
    (req.encode_to_vec(), id)
}

/// Everything a browser can do that would mean markup from spans was run or
/// rendered.
fn assert_inert(b: &Browser, what: &str) {
    assert_ne!(b.title(), "pwned", "{what}: a script from a span ran");
    assert_eq!(b.execute("return window.pwned === undefined"), json!(true), "{what}: a script from a span ran");
    assert_eq!(b.execute("return document.querySelectorAll('script').length"), json!(0), "{what}: a script element");
    assert_eq!(b.execute("return document.querySelectorAll('img').length"), json!(0), "{what}: an img element");
    assert_eq!(
        b.execute("return document.querySelectorAll('main svg:not(.chart):not([viewBox])').length"),
        json!(0),
        "{what}: an svg element from a span"
    );
    assert_eq!(b.execute("return document.querySelectorAll('main b').length > 0 && [...document.querySelectorAll('main b')].some(e => e.textContent === 'bold')"), json!(false), "{what}: <b> from a span rendered");
}

#[test]
fn the_demo_in_a_browser() {
    let Some((driver, chromium)) = browser::tools() else {
        eprintln!("skipping: ANDON_TEST_CHROMEDRIVER and ANDON_TEST_CHROMIUM are not set (tests/run sets them)");
        return;
    };
    let twin = GitHubTwin::start();
    let mut demo = Demo::start(
        &["--scenario", "mixed", "--hours", "1.5", "--rate", "1", "--seed", "3"],
        &[
            ("ANDON_LOG", "warn"),
            ("ANDON_TICKETS_SINK", "github"),
            ("ANDON_TICKETS_GITHUB_API_URL", &twin.url),
            ("ANDON_TICKETS_GITHUB_REPO", "acme/shop"),
            ("ANDON_TICKETS_GITHUB_TOKEN_ENV", "ANDON_TEST_GITHUB_TOKEN"),
            ("ANDON_TEST_GITHUB_TOKEN", &twin.token),
            ("ANDON_TICKETS_OUTBOX_INTERVAL_SECS", "1"),
        ],
    );
    demo.wait_line("Look around:", Duration::from_secs(900));
    let output = demo.output.join("\n");
    assert!(output.contains("incidents: "), "{output}");

    // A second backtest over the whole time the payment fault has been on (it
    // starts at 60% of the `mixed` history), so the drop-off it causes is found
    // with more sessions than the demo's last quarter holds.
    let resp = blocking_client()
        .post(format!("{}/api/v1/query", demo.api))
        .json(&json!({"sql": "SELECT CAST(min(start_time) AS VARCHAR) FROM spans"}))
        .send()
        .unwrap();
    let first = resp.json().unwrap()["rows"][0][0].as_str().unwrap().to_owned();
    let start = chrono::DateTime::parse_from_rfc3339(&first)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(&first, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc()))
        .unwrap_or_else(|e| panic!("{first:?}: {e}"));
    let at = |f: f64| (start + chrono::Duration::seconds((1.5 * 3600.0 * f) as i64)).to_rfc3339();
    let resp = blocking_client()
        .post(format!("{}/api/v1/analyze", demo.api))
        .json(&json!({"from": at(0.62), "to": at(1.0), "baseline_from": at(0.0), "baseline_to": at(0.35)}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text());

    // What the demo made, read through the API, is what the pages must show.
    let findings = demo.get("/api/v1/findings?state=open")["findings"].as_array().unwrap().clone();
    let latency = findings
        .iter()
        .find(|f| f["kind"] == "latency_regression" && f["service"] == "pricing")
        .unwrap_or_else(|| panic!("no pricing latency finding: {findings:#?}"))
        .clone();
    let drop_off = findings
        .iter()
        .find(|f| f["kind"] == "drop_off" && f["operation"] == "POST /checkout/payment")
        .unwrap_or_else(|| panic!("no drop-off at the payment step: {findings:#?}"))
        .clone();
    let incidents = demo.get("/api/v1/incidents")["incidents"].as_array().unwrap().clone();
    let incident = incidents
        .iter()
        .find(|i| i["change"]["service"] == "pricing")
        .unwrap_or_else(|| panic!("no incident linked to the pricing deploy: {incidents:#?}"))
        .clone();
    let pending = demo.get("/api/v1/tickets?state=pending")["tickets"].as_array().unwrap().clone();
    let ticket = pending
        .iter()
        .find(|t| {
            t["incident_id"].is_null() && t["finding_ids"].as_array().is_some_and(|ids| ids.contains(&latency["id"]))
        })
        .unwrap_or_else(|| panic!("no pending ticket for the latency finding: {pending:#?}"))
        .clone();

    let b = Browser::start(&driver, &chromium);
    let shots = screenshots();
    let url = |p: &str| format!("{}{p}", demo.api);

    // Overview: the cards, the services, the gate's queue and the incidents.
    b.goto(&url("/"));
    let text = b.page_text();
    for expected in ["open findings", "tickets waiting for review", "pricing", "checkout", "Recent incidents"] {
        assert!(text.contains(expected), "overview lacks {expected:?}:\n{text}");
    }
    assert!(text.contains(incident["title"].as_str().unwrap()), "overview lacks the incident:\n{text}");
    b.screenshot(&shots.join("overview.png"));

    // Findings: the list links every open finding.
    b.goto(&url("/findings?state=open"));
    let links = b.find_all("main table a[href^='/findings/']");
    assert!(links.len() >= findings.len(), "{} links for {} findings", links.len(), findings.len());
    b.screenshot(&shots.join("findings.png"));

    // A latency finding: percentiles over time, with the deploy marked.
    b.goto(&url(&format!("/findings/{}", latency["id"].as_str().unwrap())));
    let chart = b.text(&b.find("svg.chart"));
    assert!(chart.contains("deploy pricing 7.4.0"), "no deploy marker: {chart}");
    let legend = b.text(&b.find(".legend"));
    assert!(legend.contains("p50") && legend.contains("p95") && legend.contains("p99"), "{legend}");
    // Continuous detection keeps running in the demo: a pass between reading the
    // finding and loading its page may have given it fresher numbers.
    let page = b.page_text();
    let id = latency["id"].as_str().unwrap();
    let fresh = demo.get(&format!("/api/v1/findings/{id}"));
    let summaries = [latency["summary"].as_str().unwrap(), fresh["summary"].as_str().unwrap()];
    assert!(summaries.iter().any(|s| page.contains(s)), "the page lacks the finding's summary {summaries:?}:\n{page}");
    b.screenshot(&shots.join("finding-latency.png"));

    // Its evidence reruns in the SQL console with the finding's numbers.
    let run = b.find("a[href^='/sql?q=']:has(button)");
    b.click_to(&run, |url| url.contains("/sql?q="));
    let rows = b.find_all("main table tr");
    let table = b.text(&b.find("main table"));
    assert!(rows.len() >= 3 && table.contains("baseline") && table.contains("current"), "{table}");
    // The page's query is that of the finding as the page showed it: the one
    // read before, or the fresher one.
    let requests: Vec<String> =
        [&latency, &fresh].iter().filter_map(|f| f["current"]["requests"].as_u64()).map(|n| n.to_string()).collect();
    assert!(requests.iter().any(|n| table.contains(n)), "the rerun lacks {requests:?} requests:\n{table}");
    b.screenshot(&shots.join("sql.png"));

    // The drop-off at payment: conversion by segment shows that only mobile
    // sessions fell, whichever segment the finding itself names.
    b.goto(&url(&format!("/findings/{}", drop_off["id"].as_str().unwrap())));
    let charts = b.find_all("svg.chart");
    assert!(charts.len() >= 2, "a conversion chart and an error-rate chart");
    assert_eq!(drop_off["change"]["version"], "3.5.0", "the drop-off is attributed to the payments deploy");
    let errors = b.text(&charts[1]);
    assert!(errors.contains("deploy payments 3.5.0"), "the cause's deploy is marked: {errors}");
    let conversion = b.text(&charts[0]);
    assert!(conversion.contains("browser.mobile") && conversion.contains("os.type"), "{conversion}");
    let mobile = b.execute(
        "const r = [...document.querySelectorAll('svg.chart')[0].querySelectorAll('rect title')].map(t => t.textContent); return r;",
    );
    let shares: Vec<String> = mobile.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let share = |label: &str| -> f64 {
        shares
            .iter()
            .find(|s| s.starts_with(label))
            .and_then(|s| s.rsplit(": ").next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no bar {label:?} in {shares:?}"))
    };
    assert!(
        share("current, browser.mobile=true") < share("baseline, browser.mobile=true") - 0.1,
        "mobile conversion fell: {shares:?}"
    );
    assert!(
        (share("current, browser.mobile=false") - share("baseline, browser.mobile=false")).abs() < 0.1,
        "desktop conversion held: {shares:?}"
    );
    b.screenshot(&shots.join("finding-drop-off.png"));

    // Any retry finding shows its attempts.
    if let Some(retry) = findings.iter().find(|f| f["kind"] == "retry") {
        b.goto(&url(&format!("/findings/{}", retry["id"].as_str().unwrap())));
        assert!(b.page_text().contains("Attempts of"), "retry page lacks its attempts chart");
        b.screenshot(&shots.join("finding-retry.png"));
    }

    // The incident: timeline with onset and deploy, suspects, lineage, gates.
    b.goto(&url("/incidents"));
    b.screenshot(&shots.join("incidents.png"));
    b.goto(&url(&format!("/incidents/{}", incident["id"].as_str().unwrap())));
    let chart = b.text(&b.find("svg.chart"));
    assert!(chart.contains("onset") && chart.contains("deploy pricing 7.4.0"), "{chart}");
    let text = b.page_text();
    let pr = format!("PR #{}", incident["change"]["pr"]);
    for expected in ["Suspects", "Gate analysis", "perf-staging", "Remediation", pr.as_str()] {
        assert!(text.contains(expected), "incident page lacks {expected:?}");
    }
    let first_row = b.text(&b.find_all("main table")[1]);
    assert!(first_row.contains("pricing") && first_row.contains("GET /v1/quote"), "{first_row}");
    b.screenshot(&shots.join("incident.png"));

    // An example trace of the top suspect opens as a waterfall with every span.
    let trace_link = b.find("main a[href^='/traces/']");
    let trace_id = b.text(&trace_link);
    b.click_to(&trace_link, |url| url.contains(&format!("/traces/{trace_id}")));
    let spans = b.find_all("table.waterfall tr").len() - 1;
    let resp = blocking_client()
        .post(url("/api/v1/query"))
        .json(&json!({"sql": format!("SELECT count(*) FROM spans WHERE trace_id = '{trace_id}'")}))
        .send()
        .unwrap();
    let count = resp.json().unwrap()["rows"][0][0].as_u64().unwrap() as usize;
    assert_eq!(spans, count, "the waterfall shows every span of {trace_id}");
    assert!(b.find_all("details.span").len() == count);
    b.screenshot(&shots.join("trace.png"));
    b.goto(&url("/traces"));
    b.screenshot(&shots.join("traces.png"));

    // The human gate: approve in the browser, and the issue arrives at GitHub.
    // Continuous detection keeps running: a recurrence may retitle the draft
    // with fresher numbers, so the list must show the title the ticket has now.
    let listed = wait_for(Duration::from_secs(30), || {
        let pending = demo.get("/api/v1/tickets?state=pending")["tickets"].as_array().unwrap().clone();
        let Some(now) = pending.iter().find(|t| t["id"] == ticket["id"]) else { return false };
        b.goto(&url("/tickets"));
        let link = format!("a[href='/tickets/{}']", ticket["id"].as_str().unwrap());
        !b.find_all(&link).is_empty() && b.page_text().contains(now["title"].as_str().unwrap())
    });
    assert!(listed, "the pending list lacks the ticket {} with its current title", ticket["id"]);
    b.screenshot(&shots.join("tickets.png"));
    b.goto(&url(&format!("/tickets/{}", ticket["id"].as_str().unwrap())));
    assert!(twin.issues().is_empty(), "nothing reaches GitHub before approval");
    b.screenshot(&shots.join("ticket.png"));
    b.type_into(&b.find("#approve input[name=reviewer]"), "Dana Reviewer");
    b.type_into(&b.find("#approve textarea[name=note]"), "Confirmed on the dashboard");
    b.click_to(&b.find("#approve button[type=submit]"), |url| url.ends_with("?done=approved"));
    let text = b.page_text();
    assert!(text.contains("Decided by Dana Reviewer"), "{text}");
    let arrived = wait_for(Duration::from_secs(60), || {
        // By the ticket's marker: a recurrence may have retitled the draft.
        let marker = format!("ticket={} -->", ticket["id"].as_str().unwrap());
        twin.issues().iter().any(|i| i.body.lines().next().is_some_and(|l| l.ends_with(&marker)))
    });
    assert!(arrived, "the approved ticket never reached the GitHub twin: {:?}", twin.issues());
    let posted = wait_for(Duration::from_secs(30), || {
        b.goto(&url(&format!("/tickets/{}", ticket["id"].as_str().unwrap())));
        b.page_text().contains("Posted to github")
    });
    assert!(posted, "the ticket page never showed the issue");
    let audit = b.text(&b.find("ol.timeline"));
    assert!(audit.contains("approved by Dana Reviewer") && audit.contains("posted"), "{audit}");

    // A span whose attributes carry markup: shown as text, never run.
    let (body, hostile) = hostile_span(4242);
    let resp = blocking_client()
        .post(format!("{}/v1/traces", demo.http))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    b.goto(&url(&format!("/traces/{hostile}")));
    assert_inert(&b, "trace page");
    // Span details start folded; unfold them to read what they show.
    b.execute("document.querySelectorAll('details').forEach(d => d.open = true); return 0");
    let text = b.page_text();
    assert!(text.contains("<script>document.title='pwned';window.pwned=1</script>"), "the attribute shows as text");
    assert!(text.contains("<b>bold</b> GET /cart"), "the span name shows as text");
    assert!(text.contains("<img src=x onerror=alert(1)>"), "the attribute key shows as text");
    assert!(text.contains("\"><svg onload=alert(2)>"), "the attribute value shows as text");
    assert_inert(&b, "trace page, unfolded");
    b.goto(&url(&format!("/sql?q=SELECT+name,+attributes+FROM+spans+WHERE+trace_id+=+'{hostile}'")));
    assert_inert(&b, "sql console");
    assert!(b.page_text().contains("<b>bold</b> GET /cart"));
    b.screenshot(&shots.join("hostile-trace.png"));

    // Ctrl-C stops the demo cleanly, and its temporary data goes with it.
    drop(b);
    let data_dir = demo.data_dir.clone();
    assert!(data_dir.exists());
    let status = demo.interrupt();
    assert!(status.success(), "the demo exited with {status}");
    assert!(!data_dir.exists(), "{} was left behind", data_dir.display());
}

#[test]
fn forms_without_the_browsers_csrf_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(dir.path(), &[("ANDON_ANALYSIS_INTERVAL_SECS", "0")]);
    let client = blocking_client();
    let form = |cookie: Option<&str>, token: &str, origin: Option<&str>| {
        let mut req = client
            .post(server.api_url("/tickets/t-1/approve"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={token}&reviewer=Mallory").into_bytes());
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().unwrap();
        (resp.status().as_u16(), resp.text())
    };

    // A page hands out the token as a SameSite=Strict cookie.
    let resp = client.get(server.api_url("/tickets")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
    let cookie = set.iter().find(|c| c.starts_with("andon_csrf=")).expect("a csrf cookie");
    assert!(cookie.contains("SameSite=Strict") && cookie.contains("HttpOnly"), "{cookie}");
    let token = cookie.trim_start_matches("andon_csrf=").split(';').next().unwrap().to_owned();
    let csp = resp.headers.get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "no script may run: {csp}");
    let jar = format!("andon_csrf={token}");

    // No cookie (another site's form), a wrong token, or another origin: 403.
    let (status, body) = form(None, &token, None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = form(Some(&jar), "0123456789abcdef0123456789abcdef", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("csrf token does not match"), "{body}");
    let (status, body) = form(Some(&jar), &token, Some("https://evil.example"));
    assert_eq!(status, 403, "{body}");
    // The right token from this origin reaches the gate, which knows no such ticket.
    let origin = server.api_url("");
    let (status, body) = form(Some(&jar), &token, Some(origin.trim_end_matches('/')));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no such ticket"), "{body}");

    // Every page answers, even with nothing stored, and unknown ids are 404 pages.
    for path in ["/", "/findings", "/tickets", "/incidents", "/traces", "/sql", "/sql?q=SELECT+1"] {
        let resp = client.get(server.api_url(path)).send().unwrap();
        assert_eq!(resp.status(), 200, "{path}: {}", resp.text());
        assert!(resp.text().contains("<nav>"), "{path}");
    }
    for path in ["/findings/nope", "/incidents/nope", "/tickets/nope", "/traces/0123456789abcdef0123456789abcdef"] {
        let resp = client.get(server.api_url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.text().contains("<h1>404"), "{path}");
    }
    let resp = client.get(server.api_url("/traces/not-hex")).send().unwrap();
    assert_eq!(resp.status(), 400);
    // A bad query is an error on the page, not a failed page.
    let resp = client.get(server.api_url("/sql?q=DROP+TABLE+spans")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().contains("class=\"error\""), "{}", resp.text());
}
