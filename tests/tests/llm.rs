//! The model narrator through the real binary, against the OpenAI-compatible
//! twin: the shop's deploy-latency run is imported and its deploys posted,
//! then incidents are opened over it while the twin answers from a script.
//! A draft with an unsupported claim goes back with the validator's list and
//! a faithful one is used (`narrative_source: llm`); drafts that stay wrong,
//! a model that is down, one too slow and a spent hour's budget all leave the
//! template's narrative with the reason kept; each task goes to its model
//! and the fallback model after it; and what the model is sent is redacted.
//! On the same server the investigation agent answers a question through
//! scripted tool calls (an answer with a number no tool returned goes back,
//! one that stays unsupported is not given), and the flight recorder's runs
//! of an RCA and an investigation replay without differences until a
//! recorded input is tampered with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration as StdDuration;

use std::process::Command;

use andon_tests::llm_twin::{LlmTwin, Step, tool_results};
use andon_tests::{Server, andon_bin};
use chrono::Duration;
use serde_json::{Value, json};

#[test]
fn a_models_narrative_is_used_only_once_the_validator_accepts_it() {
    let twin = LlmTwin::start();
    let dir = tempfile::tempdir().unwrap();
    let shop = dir.path().join("shop");
    let config = format!(
        r#"
[analysis]
interval_secs = 0

[llm]
base_url = "{}"
model = "default-model"
api_key_env = "ANDON_TEST_LLM_KEY"
timeout_secs = 2
fallback_model = "small-model"
max_tokens_per_hour = 6000
max_attempts = 3

[llm.tasks]
narrate = "big-model"
"#,
        twin.url
    );
    let server = Server::start_with_config(
        &dir.path().join("data"),
        &config,
        &[("ANDON_TEST_LLM_KEY", "sk-twin-key-0123456789abcdef")],
    );
    // The deploy's PR title carries a person's address: it must never reach a prompt.
    let (_, start, end) = andon_tests::latency_shop(&server, &shop);
    let at = |f: f64| (start + Duration::seconds(((end - start).num_seconds() as f64 * f) as i64)).to_rfc3339();
    let open = || {
        let body =
            json!({"start": at(0.5), "end": end.to_rfc3339(), "baseline_start": at(0.1), "baseline_end": at(0.45)});
        let (status, inc) = server.post_json("/api/v1/incidents", &body);
        assert_eq!(status, 201, "{inc}");
        inc
    };

    // 1. A draft with an invented caller and number is sent back with the
    //    validator's list; the faithful rewrite is used.
    twin.script(vec![
        Step::Template("The ledger service caused it, adding 731 ms to every quote.".into()),
        Step::Template(String::new()),
    ]);
    let inc = open();
    assert_eq!(inc["suspects"][0]["service"], "pricing", "{inc:#}");
    assert_eq!(inc["narrative_source"], "llm", "{inc:#}");
    let v = &inc["narrative_validation"];
    assert_eq!(v["accepted"], true, "{v}");
    assert_eq!(v["attempts"], 2, "{v}");
    let asked = twin.asked();
    assert_eq!(asked.len(), 2);
    assert!(asked.iter().all(|a| a.model == "big-model"), "the narrate task goes to its model");
    assert_eq!(asked[0].authorization.as_deref(), Some("Bearer sk-twin-key-0123456789abcdef"));
    // The second request carries the rejected draft, then what was wrong with it.
    let messages = asked[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "system, evidence, the draft, the validator's list");
    assert_eq!(messages[2]["role"], "assistant");
    let feedback = messages[3]["content"].as_str().unwrap();
    assert!(feedback.starts_with("The evidence does not support"), "{feedback}");
    assert!(feedback.contains("\"ledger\"") && feedback.contains("\"731 ms\""), "{feedback}");
    assert!(!inc["narrative"].as_str().unwrap().contains("ledger"));
    let narrate = inc["steps"].as_array().unwrap().iter().find(|s| s["step"] == "narrate").unwrap();
    assert!(narrate["summary"].as_str().unwrap().starts_with("llm narrator; 2 model drafts"), "{narrate}");
    // Nothing redacted reached the model: not the address in the PR title, not the key.
    for a in &asked {
        let body = a.body.to_string();
        for secret in ["jane.doe@example.com", "203.0.113.7", "sk-twin-key"] {
            assert!(!body.contains(secret), "{secret} reached the model: {body}");
        }
        assert!(body.contains("Cache quotes"), "the evidence is in the prompt");
    }

    let inc_run = inc["run_id"].as_str().expect("an incident links its run").to_owned();

    // 2. Drafts that stay wrong: after 3 the template is used, and the report
    //    keeps what the last one claimed without support.
    twin.script(vec![
        Step::Template("It began at 04:17 UTC.".into()),
        Step::Template("It began at 04:17 UTC.".into()),
        Step::Template("Trace 0123456789abcdef0123456789abcdef shows it.".into()),
    ]);
    let before = twin.asked().len();
    let inc = open();
    assert_eq!(inc["narrative_source"], "template", "{inc:#}");
    let v = &inc["narrative_validation"];
    assert_eq!((v["accepted"].as_bool(), v["attempts"].as_u64()), (Some(false), Some(3)), "{v}");
    assert!(v["violations"].to_string().contains("0123456789abcdef0123456789abcdef"), "{v}");
    assert_eq!(twin.asked().len() - before, 3);

    // 3. The task's model keeps failing (the client retries a 5xx three
    //    times with backoff); the fallback model answers and is used.
    let mut steps = vec![Step::Fail(500); 4];
    steps.push(Step::Template(String::new()));
    twin.script(steps);
    let before = twin.asked().len();
    let inc = open();
    assert_eq!(inc["narrative_source"], "llm", "{inc:#}");
    let models: Vec<String> = twin.asked()[before..].iter().map(|a| a.model.clone()).collect();
    assert_eq!(models, ["big-model", "big-model", "big-model", "big-model", "small-model"]);

    // 4. Both models down: the template, with the reason.
    twin.script(vec![Step::Fail(503); 8]);
    let inc = open();
    assert_eq!(inc["narrative_source"], "template");
    let v = &inc["narrative_validation"];
    assert_eq!(v["attempts"], 0, "{v}");
    assert!(v["error"].as_str().unwrap().contains("small-model"), "{v}");

    // 5. Too slow (past timeout_secs = 2) on both: the template.
    twin.script(vec![Step::Stall(StdDuration::from_secs(4)), Step::Stall(StdDuration::from_secs(4))]);
    let inc = open();
    assert_eq!(inc["narrative_source"], "template");
    assert!(inc["narrative_validation"]["error"].as_str().unwrap().contains("timed out"), "{inc:#}");

    // The investigation agent and the flight recorder, on the same server.
    let investigation_run = investigations(&server, &twin, &at(0.5), &end.to_rfc3339(), &at(0.1), &at(0.45));
    replays(&server, &inc_run, &investigation_run);

    // 6. The hour's budget (6,000 tokens; each answer reports 700) is spent
    //    by now: no request is sent, the template is used.
    twin.state().tokens_per_answer = 5000;
    twin.script(vec![Step::Template(String::new()), Step::Template(String::new())]);
    let _ = open();
    twin.script(vec![Step::Template(String::new())]);
    let before = twin.asked().len();
    let inc = open();
    assert_eq!(twin.asked().len(), before, "no request once the budget is spent");
    assert_eq!(inc["narrative_source"], "template");
    assert!(inc["narrative_validation"]["error"].as_str().unwrap().contains("budget"), "{inc:#}");

    // 7. A detection pass is a run too (no model is asked any more: the
    //    budget is spent); its findings name it, and it replays as recorded.
    let (status, r) = server.post_json(
        "/api/v1/analyze",
        &json!({"from": at(0.5), "to": end.to_rfc3339(), "baseline_from": at(0.1), "baseline_to": at(0.45)}),
    );
    assert_eq!(status, 200, "{r}");
    let findings = r["findings"].as_array().unwrap();
    assert!(findings.iter().any(|f| f["service"] == "pricing"), "{r:#}");
    let run = findings[0]["run_id"].as_str().expect("a finding names its run").to_owned();
    assert!(findings.iter().all(|f| f["run_id"] == run.as_str()), "one pass, one run");
    let (_, recorded) = server.get_json(&format!("/api/v1/runs/{run}"));
    assert_eq!(recorded["kind"], "detection", "{recorded:#}");
    let (status, replay) = server.post_json(&format!("/api/v1/runs/{run}/replay"), &json!({}));
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["differences"], json!([]), "{replay:#}");
    assert!(replay["replayed"].as_u64().unwrap() >= 5, "each detector, select, attribute, cluster, detect: {replay:#}");
    // The tickets drafted from its findings name it too.
    let (_, tickets) = server.get_json("/api/v1/tickets");
    let pricing = findings.iter().find(|f| f["service"] == "pricing").unwrap()["id"].as_str().unwrap().to_owned();
    let ticket = tickets["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["incident_id"].is_null()
                && t["finding_ids"].as_array().is_some_and(|ids| ids.iter().any(|i| i == pricing.as_str()))
        })
        .unwrap_or_else(|| panic!("a ticket for {pricing}: {tickets:#}"));
    assert_eq!(ticket["run_id"], run.as_str(), "{ticket:#}");
    // The RCA ticket of the incident the finding opened names the RCA's run,
    // and its report is rendered from the masked incident.
    for t in tickets["tickets"].as_array().unwrap().iter().filter(|t| t["incident_id"].is_string()) {
        let (_, inc) = server.get_json(&format!("/api/v1/incidents/{}", t["incident_id"].as_str().unwrap()));
        assert_eq!(t["run_id"], inc["run_id"], "{t:#}");
        let body = t["body"].as_str().unwrap();
        assert!(!body.contains("jane.doe") && !body.contains("203.0.113.7"), "{body}");
    }
}

/// A UI page's HTML.
fn page(server: &Server, path: &str) -> String {
    let resp = andon_tests::reqwest::blocking_client().get(server.api_url(path)).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    resp.text()
}

/// Waits for an investigation to finish.
fn settled(server: &Server, id: &str) -> Value {
    for _ in 0..600 {
        let (status, inv) = server.get_json(&format!("/api/v1/investigations/{id}"));
        assert_eq!(status, 200, "{inv}");
        if inv["state"] != "running" {
            return inv;
        }
        std::thread::sleep(StdDuration::from_millis(200));
    }
    panic!("investigation {id} never finished");
}

const SPANS_SQL: &str =
    "SELECT service_name, count(*) AS spans FROM spans WHERE service_name = 'pricing' GROUP BY service_name";

/// The answer a model would write from its tool results: the RCA's culprit
/// and change, and the span count the query returned.
fn answer_from(body: &Value, planted: &str) -> String {
    let results = tool_results(body);
    let inc = &results.iter().rev().find(|(n, _)| n == "open_incident").expect("an rca result").1;
    assert!(inc["id"].is_string(), "the rca tool answered {inc}");
    let rows = &results.iter().find(|(n, _)| n == "sql").expect("a query result").1["rows"];
    let top = &inc["suspects"][0];
    let change = &inc["change"];
    format!(
        "The RCA of {} blames `{}` on `{}`: the slowdown was caused by {} {} (PR #{}). `pricing` served {} spans in \
         the data.{planted}",
        inc["id"].as_str().unwrap(),
        top["service"].as_str().unwrap(),
        top["operation"].as_str().unwrap(),
        change["service"].as_str().unwrap(),
        change["version"].as_str().unwrap(),
        change["pr"],
        rows[0]["spans"],
    )
}

/// Returns the run of the answered investigation.
fn investigations(server: &Server, twin: &LlmTwin, start: &str, end: &str, b_start: &str, b_end: &str) -> String {
    twin.state().tokens_per_answer = 10;
    let before = twin.asked().len();
    // 1. Tools, then an answer with a number no tool returned; it goes back
    //    with the validator's list and the supported rewrite is the answer.
    let window = json!({"start": start, "end": end, "baseline_start": b_start, "baseline_end": b_end});
    twin.script(vec![
        Step::Call(vec![("list_findings".into(), json!({})), ("sql".into(), json!({"sql": SPANS_SQL}))]),
        Step::call("open_incident", window),
        // The RCA the tool runs has its narrative written by the narrate task.
        Step::Template(String::new()),
        Step::reply(|b| answer_from(b, " Quotes took 9,999 ms at worst.")),
        Step::reply(|b| answer_from(b, "")),
    ]);
    let (status, inv) =
        server.post_json("/api/v1/investigations", &json!({"question": "Why are quotes slow since the deploy?"}));
    assert_eq!(status, 201, "{inv}");
    assert_eq!(inv["state"], "running");
    let inv = settled(server, inv["id"].as_str().unwrap());
    assert_eq!(inv["state"], "answered", "{inv:#}");
    let answer = inv["answer"].as_str().unwrap();
    assert!(answer.contains("`pricing`") && !answer.contains("9,999"), "{answer}");
    let asked = &twin.asked()[before..];
    let models: Vec<&str> = asked.iter().map(|a| a.model.as_str()).collect();
    // The investigate task has no model of its own here; narrate does.
    assert_eq!(models, ["default-model", "default-model", "big-model", "default-model", "default-model"]);
    let tools: Vec<&str> =
        asked[0].body["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(tools, ["sql", "get_trace", "list_findings", "list_incidents", "list_changes", "open_incident"]);
    let feedback =
        asked[4].body["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_owned();
    assert!(feedback.starts_with("No tool result supports") && feedback.contains("9,999 ms"), "{feedback}");
    // It cites the query and the incident it rests on.
    let cites: Vec<(String, String)> = inv["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap().to_owned(), c["ref"].as_str().unwrap().to_owned()))
        .collect();
    assert!(cites.contains(&("query".into(), SPANS_SQL.into())), "{cites:?}");
    let inc_id = cites.iter().find(|(k, _)| k == "incident").map(|(_, r)| r.clone()).expect("cites the incident");
    let (status, _) = server.get_json(&format!("/api/v1/incidents/{inc_id}"));
    assert_eq!(status, 200, "the agent's incident is stored");
    // The run: each model turn, tool call and verdict, with its parents.
    let run_id = inv["run_id"].as_str().unwrap();
    let (status, run) = server.get_json(&format!("/api/v1/runs/{run_id}"));
    assert_eq!(status, 200, "{run}");
    let steps = run["steps"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> =
        steps.iter().map(|s| (s["kind"].as_str().unwrap(), s["name"].as_str().unwrap())).collect();
    assert_eq!(
        kinds,
        [
            ("input", "question"),
            ("model", "default-model"),
            ("tool", "list_findings"),
            ("tool", "sql"),
            ("model", "default-model"),
            ("tool", "open_incident"),
            ("model", "default-model"),
            ("validate", "validator"),
            ("model", "default-model"),
            ("validate", "validator"),
            ("decision", "outcome"),
        ],
        "{run:#}"
    );
    assert_eq!(steps[3]["parents"], json!([steps[1]["id"]]), "a tool call's parent is the turn that asked");
    assert!(steps[7]["summary"].as_str().unwrap().contains("unsupported"), "{}", steps[7]);
    assert_eq!(steps[2]["input_sha256"].as_str().unwrap().len(), 64);
    // The `runs` table in SQL.
    let (status, q) = server.post_json(
        "/api/v1/query",
        &json!({"sql": format!("SELECT count(*) AS n FROM runs WHERE run_id = '{run_id}' AND kind = 'tool'")}),
    );
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["rows"][0][0], 3, "{q}");
    // The UI shows the answer with its sources, and the run as a timeline.
    let html = page(server, &format!("/investigations/{}", inv["id"].as_str().unwrap()));
    assert!(html.contains("What the answer rests on") && html.contains(&inc_id), "{html}");
    assert!(html.contains(&format!("/runs/{run_id}")), "{html}");
    let html = page(server, &format!("/runs/{run_id}"));
    assert!(
        html.contains("How Andon got here") && html.contains("open_incident") && html.contains("validator"),
        "{html}"
    );
    assert!(page(server, "/investigations").contains("Why are quotes slow since the deploy?"));

    // 2. Answers that stay unsupported are not given.
    twin.script(vec![Step::Say("`pricing` p95 is 812 ms.".into()); 3]);
    let (_, inv) = server.post_json("/api/v1/investigations", &json!({"question": "How slow is pricing?"}));
    let inv = settled(server, inv["id"].as_str().unwrap());
    assert_eq!(inv["state"], "inconclusive", "{inv:#}");
    assert!(inv["answer"].is_null(), "{inv:#}");
    assert!(inv["violations"].to_string().contains("812 ms"), "{inv:#}");

    // 3. `andon ask` prints the answer and where it came from.
    twin.script(vec![Step::Say("INCONCLUSIVE: the tools were not asked anything.".into())]);
    let out = Command::new(andon_bin())
        .args(["ask", "--server", &server.api_url(""), "Is anything wrong?"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("inconclusive") && text.contains("the tools were not asked anything"), "{text}");
    assert!(text.contains("andon runs show run-"), "{text}");

    // 4. With the model down, the investigation fails and says why.
    twin.script(vec![Step::Fail(503); 8]);
    let (_, inv) = server.post_json("/api/v1/investigations", &json!({"question": "Anything?"}));
    let inv = settled(server, inv["id"].as_str().unwrap());
    assert_eq!(inv["state"], "failed", "{inv:#}");
    assert!(inv["reason"].as_str().unwrap().contains("small-model"), "{inv:#}");
    run_id.to_owned()
}

fn replays(server: &Server, rca_run: &str, investigation_run: &str) {
    // An RCA and an investigation replay as recorded.
    for run in [rca_run, investigation_run] {
        let (status, r) = server.post_json(&format!("/api/v1/runs/{run}/replay"), &json!({}));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["differences"], json!([]), "{r:#}");
        assert!(r["replayed"].as_u64().unwrap() >= 4, "{r:#}");
    }
    let (_, run) = server.get_json(&format!("/api/v1/runs/{rca_run}"));
    let names: Vec<&str> = run["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "request",
            "localize",
            "onset",
            "link",
            "gates",
            "similar",
            "model request",
            "model request",
            "narrate",
            "ticket"
        ],
        "{run:#}"
    );
    // Each request to the model is kept as sent, redacted, with the
    // validator's verdict on its answer.
    let steps = run["steps"].as_array().unwrap();
    assert!(steps[6]["summary"].as_str().unwrap().contains("rejected"), "{:#}", steps[6]);
    assert!(steps[7]["summary"].as_str().unwrap().contains("accepted by the validator"), "{:#}", steps[7]);
    assert_eq!(steps[8]["parents"], json!([steps[7]["id"]]));
    // Its ticket's draft follows the report.
    assert!(steps[9]["summary"].as_str().unwrap().starts_with("RCA ticket tk-"), "{:#}", steps[9]);
    let db = rusqlite::Connection::open(server.data_dir.join("andon.db")).unwrap();
    let blob = |sha: &Value| -> String {
        let body: Vec<u8> = db
            .query_row("SELECT body FROM run_blobs WHERE sha256 = ?1", [sha.as_str().unwrap()], |r| r.get(0))
            .unwrap();
        String::from_utf8(body).unwrap()
    };
    let (sent, answered) = (blob(&steps[6]["input_sha256"]), blob(&steps[6]["output_sha256"]));
    assert!(sent.contains("Cache quotes") && !sent.contains("jane.doe") && !sent.contains("203.0.113.7"), "{sent}");
    assert!(answered.contains("ledger") && answered.contains("violations"), "{answered}");
    drop(db);

    // Tamper with the recorded query of the investigation: replay names the step.
    let (_, run) = server.get_json(&format!("/api/v1/runs/{investigation_run}"));
    let sql_step = run["steps"].as_array().unwrap().iter().find(|s| s["name"] == "sql").unwrap().clone();
    let db = rusqlite::Connection::open(server.data_dir.join("andon.db")).unwrap();
    let forged = json!({"tool": "sql", "arguments": {"sql": SPANS_SQL.replace("pricing", "checkout")}});
    let changed = db
        .execute(
            "UPDATE run_blobs SET body = ?2 WHERE sha256 = ?1",
            rusqlite::params![sql_step["input_sha256"].as_str().unwrap(), forged.to_string().into_bytes()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    let out = Command::new(andon_bin())
        .args(["replay", "--server", &server.api_url(""), investigation_run])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a replay with differences fails: {text}");
    let id = sql_step["id"].as_str().unwrap();
    assert!(text.contains(&format!("differs: step {id} (sql): the recorded input no longer has the hash")), "{text}");
    assert!(text.contains(&format!("differs: step {id} (sql): sql returned something else")), "{text}");
    // `andon runs show` draws the run as a timeline.
    let out = Command::new(andon_bin())
        .args(["runs", "show", "--server", &server.api_url(""), investigation_run])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("investigation") && text.contains("open_incident") && text.contains("← s"), "{text}");
}

/// The model's opening of a finding's ticket: the JSON of the finding the
/// prompt carries, and its summary.
fn ticket_prompt(body: &Value) -> Option<(Value, String)> {
    let first = body["messages"].as_array()?.iter().find(|m| m["role"] == "user")?["content"].as_str()?;
    let rest = first.split_once("The finding, as JSON:\n")?.1;
    let (json, rest) = rest.split_once("\n\nIts summary, written by the detector, for reference:\n")?;
    let summary = rest.split("\n\nWrite the opening paragraph").next()?.to_owned();
    Some((serde_json::from_str(json).ok()?, summary))
}

/// A ticket's opening paragraph is the model's once the validator accepts it,
/// written by the model the `ticket` task is routed to; the next pass keeps
/// it while its evidence still holds instead of asking again. The detection
/// run records the opening (with the validator's verdict), the draft, the
/// gate's approval and the delivery to the file sink, and still replays
/// step by step without a difference.
#[test]
fn a_tickets_opening_is_the_models_once_validated_and_its_gate_and_delivery_are_recorded() {
    let twin = LlmTwin::start();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[analysis]
interval_secs = 0

[llm]
base_url = "{}"
model = "default-model"
api_key_env = "ANDON_TEST_LLM_KEY"
timeout_secs = 5
max_attempts = 2
max_tokens_per_hour = 1000000

[llm.tasks]
ticket = "ticket-model"

[tickets]
outbox_interval_secs = 1
"#,
        twin.url
    );
    let server =
        Server::start_with_config(&dir.path().join("data"), &config, &[("ANDON_TEST_LLM_KEY", "sk-twin-key-01234567")]);
    let (_, start, end) = andon_tests::latency_shop(&server, &dir.path().join("shop"));
    let at = |f: f64| (start + Duration::seconds(((end - start).num_seconds() as f64 * f) as i64)).to_rfc3339();
    // Openings: the first draft of each invents a release; the rewrite of
    // `pricing`'s keeps to its finding, every other stays wrong. Narratives
    // (of the incidents the findings open) are the template's.
    let write = |body: &Value| -> String {
        let Some((finding, summary)) = ticket_prompt(body) else {
            let text = body["messages"][1]["content"].as_str().unwrap_or_default();
            let template = text.split_once("for reference:\n").map_or("", |x| x.1);
            return template.split("\n\nWrite the narrative.").next().unwrap_or_default().trim().to_owned();
        };
        let retry = body["messages"].as_array().unwrap().len() > 2;
        if retry && finding["service"] == "pricing" {
            format!("{summary} It touches {} sessions.", finding["affected"]["sessions"])
        } else {
            format!("{summary} It began when `ledger` 9.9.9 shipped.")
        }
    };
    let write = std::sync::Arc::new(write);
    let steps: Vec<Step> = (0..60)
        .map(|_| {
            let w = std::sync::Arc::clone(&write);
            Step::reply(move |b| w(b))
        })
        .collect();
    twin.script(steps);
    let analyze = || {
        let body = json!({"from": at(0.5), "to": end.to_rfc3339(), "baseline_from": at(0.1), "baseline_to": at(0.45)});
        let (status, r) = server.post_json("/api/v1/analyze", &body);
        assert_eq!(status, 200, "{r}");
        r
    };
    let r = analyze();
    let findings = r["findings"].as_array().unwrap().clone();
    let pricing = findings.iter().find(|f| f["service"] == "pricing").unwrap_or_else(|| panic!("{r:#}"));
    let (pricing_id, run) = (pricing["id"].as_str().unwrap(), pricing["run_id"].as_str().unwrap().to_owned());

    let ticket_of = |finding: &str| -> Value {
        let (_, tickets) = server.get_json("/api/v1/tickets");
        tickets["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["incident_id"].is_null() && t["finding_ids"].as_array().unwrap().iter().any(|i| i == finding))
            .cloned()
            .unwrap_or_else(|| panic!("a ticket for {finding}: {tickets:#}"))
    };
    let ticket = ticket_of(pricing_id);
    let opening = &ticket["opening"];
    assert_eq!(opening["narrative_source"], "llm", "{ticket:#}");
    assert_eq!(opening["narrative_validation"]["attempts"], 2, "{ticket:#}");
    let text = opening["text"].as_str().unwrap();
    assert!(text.ends_with(&format!("It touches {} sessions.", pricing["affected"]["sessions"])), "{text}");
    let body = ticket["body"].as_str().unwrap();
    assert!(body.contains("sessions.") && !body.contains("9.9.9"), "{body}");
    // The reviewer at the gate sees who wrote it, and how Andon got there.
    let html = page(&server, &format!("/tickets/{}", ticket["id"].as_str().unwrap()));
    assert!(html.contains("A model wrote the opening paragraph") && html.contains("accepted after 2 drafts"), "{html}");
    assert!(html.contains(&format!("/runs/{run}")), "{html}");
    // Any other finding's ticket opens with its detector's summary, the
    // rejected claim kept beside it.
    for f in findings.iter().filter(|f| f["service"] != "pricing" && f["severity"] != "low") {
        let t = ticket_of(f["id"].as_str().unwrap());
        assert_eq!(t["opening"]["narrative_source"], "template", "{t:#}");
        let violations = t["opening"]["narrative_validation"]["violations"].as_array().unwrap();
        assert!(violations.iter().any(|v| v["text"].as_str().unwrap().contains("9.9.9")), "{t:#}");
    }
    // Every opening went to the ticket task's model, and nothing it was sent
    // carries the address in the deploy's PR title.
    let asked = twin.asked();
    let openings: Vec<_> = asked.iter().filter(|a| ticket_prompt(&a.body).is_some()).collect();
    assert!(openings.len() >= 2, "{} requests", asked.len());
    assert!(
        openings.iter().all(|a| a.model == "ticket-model"),
        "{:?}",
        openings.iter().map(|a| &a.model).collect::<Vec<_>>()
    );
    assert!(asked.iter().all(|a| !a.text.contains("jane.doe") && !a.text.contains("203.0.113.7")));

    // The next pass over the same windows keeps the accepted opening: its
    // evidence still supports it, so the model is not asked for it again.
    let before =
        twin.asked().iter().filter(|a| ticket_prompt(&a.body).is_some_and(|(f, _)| f["service"] == "pricing")).count();
    let again = analyze();
    let again_run = again["findings"].as_array().unwrap().iter().find(|f| f["service"] == "pricing").unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let after =
        twin.asked().iter().filter(|a| ticket_prompt(&a.body).is_some_and(|(f, _)| f["service"] == "pricing")).count();
    assert_eq!(after, before, "a still-valid opening is kept, not written again");
    let ticket = ticket_of(pricing_id);
    assert_eq!(ticket["opening"]["text"], text, "{ticket:#}");
    assert_eq!(ticket["run_id"], again_run.as_str());

    // The gate and the delivery follow in the run that made the latest draft.
    let id = ticket["id"].as_str().unwrap();
    let (status, approved) =
        server.post_json(&format!("/api/v1/tickets/{id}/approve"), &json!({"reviewer": "alice", "note": "real"}));
    assert_eq!(status, 200, "{approved}");
    assert!(
        andon_tests::wait_for(StdDuration::from_secs(30), || ticket_of(pricing_id)["state"] == "posted"),
        "{:#}",
        ticket_of(pricing_id)
    );
    let (_, recorded) = server.get_json(&format!("/api/v1/runs/{again_run}"));
    let steps = recorded["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap_or_else(|| panic!("no {n} step: {names:?}"));
    assert!(pos("select") < pos("attribute") && pos("attribute") < pos("cluster") && pos("cluster") < pos("detect"));
    assert!(pos("detect") < pos("ticket opening") && pos("ticket opening") < pos("ticket"), "{names:?}");
    assert!(pos("ticket") < pos("gate") && pos("gate") < pos("deliver to file"), "{names:?}");
    let gate = &steps[pos("gate")];
    assert!(gate["summary"].as_str().unwrap().contains("approved by alice"), "{gate:#}");
    assert_eq!(gate["parents"], json!([steps[pos("gate") - 1]["id"]]));
    let delivered = &steps[pos("deliver to file")];
    assert!(delivered["summary"].as_str().unwrap().contains("delivered"), "{delivered:#}");
    assert!(steps[pos("ticket opening")]["summary"].as_str().unwrap().contains("kept"), "{names:?}");
    // The first run holds each request to the model with its verdict, then
    // the opening: accepted after two drafts.
    let (_, first) = server.get_json(&format!("/api/v1/runs/{run}"));
    let first = first["steps"].as_array().unwrap();
    let opened = first
        .iter()
        .position(|s| s["name"] == "ticket opening" && s["summary"].as_str().unwrap().starts_with(pricing_id))
        .unwrap();
    assert!(first[opened]["summary"].as_str().unwrap().contains("accepted after 2 drafts"), "{:#}", first[opened]);
    let (rejected, accepted) = (&first[opened - 2], &first[opened - 1]);
    assert_eq!((rejected["name"].as_str(), rejected["kind"].as_str()), (Some("model request"), Some("model")));
    assert!(rejected["summary"].as_str().unwrap().contains("ticket draft 1 (ticket-model): rejected"), "{rejected:#}");
    assert!(accepted["summary"].as_str().unwrap().contains("draft 2 (ticket-model): accepted"), "{accepted:#}");
    assert_eq!(accepted["parents"], json!([rejected["id"]]));

    // Replayed: each detector's queries, the selection, the attribution, the
    // grouping and the findings come out as recorded; what followed the pass
    // is not re-run.
    let (status, replay) = server.post_json(&format!("/api/v1/runs/{again_run}/replay"), &json!({}));
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["differences"], json!([]), "{replay:#}");
    let pass_steps = names.iter().filter(|n| n.ends_with(" tests")).count() + 3;
    assert_eq!(replay["replayed"].as_u64(), Some(pass_steps as u64 + 1), "{replay:#}");
}
