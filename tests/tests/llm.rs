//! The model narrator through the real binary, against the OpenAI-compatible
//! twin: the shop's deploy-latency run is imported and its deploys posted,
//! then incidents are opened over it while the twin answers from a script.
//! A draft with an unsupported claim goes back with the validator's list and
//! a faithful one is used (`narrative_source: llm`); drafts that stay wrong,
//! a model that is down, one too slow and a spent hour's budget all leave the
//! template's narrative with the reason kept; each task goes to its model
//! and the fallback model after it; and what the model is sent is redacted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration as StdDuration;

use andon_tests::Server;
use andon_tests::llm_twin::{LlmTwin, Step};
use chrono::Duration;
use serde_json::json;

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
}
