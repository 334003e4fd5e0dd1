//! Change lineage through the server: `POST /api/v1/changes`, the same deploy
//! reported twice, bad input, `GET` filters, the `changes` SQL table, and
//! `andon changes add` from flags and from the simulated shop's changes.json.

use std::process::Command;

use andon_tests::reqwest::blocking_client;
use andon_tests::{Server, andon_bin, fixtures_bin};
use serde_json::{Value, json};

fn post(server: &Server, body: &Value) -> (u16, Value) {
    let resp = blocking_client().post(server.api_url("/api/v1/changes")).json(body).send().unwrap();
    (resp.status().as_u16(), resp.json().unwrap())
}

fn list(server: &Server, query: &str) -> Vec<Value> {
    let resp = blocking_client().get(server.api_url(&format!("/api/v1/changes{query}"))).send().unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text());
    resp.json().unwrap()["changes"].as_array().unwrap().clone()
}

#[test]
fn deploys_and_their_gates_form_the_change_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let deploy = json!({
        "service": "pricing", "version": "7.4.0", "environment": "production",
        "deployed_at": "2026-11-21T09:37:00Z", "commit": "9f8e7d6c5b4a39281706",
        "repository": "acme-shop/pricing", "pr": 4417, "title": "Quote: batch tax lookups", "author": "dana",
        "gates": [{"name": "unit", "kind": "tests", "verdict": "pass", "summary": "1,204 passed"}]
    });
    let (status, first) = post(&server, &deploy);
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    // The perf gate finishes later and reports on the same deploy.
    let perf = json!({
        "service": "pricing", "version": "7.4.0", "environment": "production", "deployed_at": "2026-11-21T09:37:00Z",
        "gates": [{"name": "perf", "kind": "perf", "verdict": "pass", "summary": "p95 +1.5% in staging",
                   "metrics": {"p95_delta_pct": 1.5}}]
    });
    let (status, again) = post(&server, &perf);
    assert_eq!((status, again["id"].as_str()), (200, Some(id.as_str())));

    // Bad input is refused with the reason, and nothing is recorded.
    for (bad, needle) in [
        (json!({"service": "pricing", "version": "7.5.0"}), "deployed_at"),
        (
            json!({"service": "pricing", "version": "7.5.0", "deployed_at": "2026-11-21T10:00:00Z", "comit": "x"}),
            "comit",
        ),
        (
            json!({"service": "pricing", "version": "7.5.0", "deployed_at": "2026-11-21T10:00:00Z", "commit": "zz"}),
            "commit",
        ),
    ] {
        let (status, err) = post(&server, &bad);
        assert_eq!(status, 400, "{err}");
        assert!(err["error"].as_str().unwrap().contains(needle), "{err}");
    }

    // From the CLI, with flags.
    let out = Command::new(andon_bin())
        .args(["changes", "add", "--service", "cart", "--version", "2.8.1", "--deployed-at", "2026-11-21T08:00:00Z"])
        .args(["--commit", "abcdef1234567", "--pr", "311", "--server"])
        .arg(server.api_url(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("recorded"));

    let all = list(&server, "");
    assert_eq!(all.len(), 2);
    let pricing = &list(&server, "?service=pricing")[0];
    assert_eq!(pricing["id"], id.as_str());
    assert_eq!(pricing["pr"], 4417);
    assert_eq!(pricing["author"], "dana");
    let gates: Vec<&str> = pricing["gates"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(gates, ["unit", "perf"]);
    assert_eq!(pricing["gates"][1]["metrics"]["p95_delta_pct"], 1.5);
    assert_eq!(list(&server, "?since=2026-11-21T09:00:00Z").len(), 1);
    let resp = blocking_client().get(server.api_url("/api/v1/changes?since=yesterday")).send().unwrap();
    assert_eq!(resp.status(), 400);

    // The lineage is a table beside spans.
    let rows = server.query("SELECT service, version, pr, gates FROM changes ORDER BY deployed_at");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0], "cart");
    assert_eq!(rows[1][2], 4417);
    assert!(rows[1][3].as_str().unwrap().contains("p95 +1.5% in staging"));

    // The simulated shop's deploys, as a pipeline would post them.
    let shop = dir.path().join("shop");
    let out = Command::new(fixtures_bin())
        .args(["simulate", "--scenario", "latency", "--hours", "0.5", "--rate", "0.2", "--seed", "3"])
        .args(["--end", "2026-11-20T12:00:00Z", "--out"])
        .arg(&shop)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(shop.join("changes.json")).unwrap()).unwrap();
    let n = file.as_array().unwrap().len();
    assert!(n > 0);
    let out = Command::new(andon_bin())
        .args(["changes", "add", "--file"])
        .arg(shop.join("changes.json"))
        .arg("--server")
        .arg(server.api_url(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The file also holds pricing 7.4.0 in production: the same deploy as the
    // one posted above, so it is updated, not added.
    let listed = list(&server, "");
    assert_eq!(listed.len(), 2 + n - 1, "{listed:#?}");
    let pricing = &list(&server, "?service=pricing")[0];
    assert_eq!(pricing["id"], id.as_str());
    let gates: Vec<&str> = pricing["gates"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert!(gates.contains(&"unit") && gates.len() >= 2, "earlier gates are kept: {gates:?}");
    let perf_gated =
        listed.iter().filter(|c| c["gates"].as_array().is_some_and(|g| g.iter().any(|g| g["kind"] == "perf")));
    assert!(perf_gated.count() >= 1);
}

/// With `rca.github_enrich` on, a change posted with only its repository and
/// commit gets its PR, title, author and check runs from GitHub (the twin,
/// through octocrab); what the pipeline reported itself is kept.
#[test]
fn changes_are_filled_in_from_github() {
    use andon_tests::github_twin::{GitHubTwin, TwinCheckRun, TwinPull};

    let twin = GitHubTwin::start();
    let commit = "4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c";
    {
        let mut s = twin.state();
        s.pulls.push(TwinPull {
            commit: commit.into(),
            number: 4417,
            title: "Evaluate promotional price rules per line item".into(),
            login: "jchen".into(),
        });
        for (name, conclusion, title) in [
            ("unit-and-integration", "success", "2114 passed"),
            ("perf-staging", "success", "p95 +1.5% on GET /v1/quote"),
            ("lint", "failure", "3 warnings"),
        ] {
            s.check_runs.push(TwinCheckRun {
                commit: commit.into(),
                name: name.into(),
                conclusion: conclusion.into(),
                title: title.into(),
            });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &dir.path().join("data"),
        &[
            ("ANDON_RCA_GITHUB_ENRICH", "true"),
            ("ANDON_RCA_GITHUB_API_URL", &twin.url),
            ("ANDON_RCA_GITHUB_TOKEN_ENV", "TWIN_GITHUB_TOKEN"),
            ("TWIN_GITHUB_TOKEN", &twin.token),
        ],
    );
    let (status, body) = post(
        &server,
        &json!({"service": "pricing", "version": "7.4.0", "deployed_at": "2026-11-21T09:37:00Z",
                "repository": "https://github.com/acme-shop/pricing", "commit": commit,
                "gates": [{"name": "lint", "kind": "tests", "verdict": "pass", "summary": "reported by the pipeline"}]}),
    );
    assert_eq!(status, 201, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let change = loop {
        let c = list(&server, "?service=pricing").remove(0);
        if c.get("pr").is_some() && c["gates"].as_array().unwrap().len() == 3 {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "not enriched: {c:#}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(change["pr"], 4417);
    assert_eq!(change["title"], "Evaluate promotional price rules per line item");
    assert_eq!(change["author"], "jchen");
    let gate = |n: &str| change["gates"].as_array().unwrap().iter().find(|g| g["name"] == n).unwrap().clone();
    assert_eq!(gate("perf-staging")["kind"], "perf");
    assert_eq!(gate("perf-staging")["summary"], "p95 +1.5% on GET /v1/quote");
    assert_eq!(gate("unit-and-integration")["verdict"], "pass");
    // The pipeline's own report of a gate wins over the check run.
    assert_eq!(gate("lint")["verdict"], "pass");
    assert_eq!(gate("lint")["summary"], "reported by the pipeline");
    // Every request carried the token, and went where it was pointed.
    let requests = twin.requests();
    assert!(requests.iter().any(|r| r.path.ends_with(&format!("/commits/{commit}/pulls"))), "{requests:?}");
    assert!(requests.iter().all(|r| r.authorization.as_deref().is_some_and(|a| a.contains(&twin.token))));
}
