//! The narrative validator against a corpus: planted claims the evidence does
//! not support (every one must be rejected, each for the claim planted), and
//! faithful narratives in varied wording (every one must be accepted).
//!
//! The two incidents are reports as the RCA writes them (a latency
//! regression linked to pricing 7.4.0 whose perf gate ran on synthetic load;
//! an error-rate regression linked to payments 3.5.0 whose contract tests
//! were skipped). The system's services are the simulated shop's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use andon_model::Incident;
use andon_rca::llm::validate::Evidence;

const SHOP: &[&str] = &[
    "frontend",
    "web",
    "cart",
    "catalog",
    "checkout",
    "pricing",
    "payments",
    "inventory",
    "search",
    "accounts",
    "shipping",
];

fn incident(name: &str) -> Incident {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("incident fixture parses")
}

fn evidence(name: &str) -> Evidence {
    Evidence::of_incident(&incident(name)).with_known_services(SHOP.iter().map(|s| (*s).to_owned()))
}

/// A faithful opening the planted claims are spliced into.
const LATENCY_OK: &str = "The p95 latency of `GET /v1/quote` in `pricing` went from 15.6 ms to 89.5 ms from 11:11 UTC, \
    as pricing 7.4.0 (commit 964101d, PR #4817) rolled out.";

/// (incident, draft, what the planted claim is about: a word the violation must quote or explain)
fn planted() -> Vec<(&'static str, String, &'static str)> {
    let l = |s: &str| ("latency_incident", format!("{LATENCY_OK} {s}"), "");
    let e = |s: &str| ("error_incident", s.to_owned(), "");
    let mut out: Vec<(&str, String, &str)> = Vec::new();
    let mut push = |(i, d, _): (&'static str, String, &'static str), key: &'static str| out.push((i, d, key));

    // Wrong numbers.
    push(l("Its p95 went from 15.6 ms to 95.1 ms."), "95.1");
    push(l("The p95 rose by 612%."), "612%");
    push(l("Requests took 140.2 ms on average against 104.8 ms."), "140.2");
    push(l("The regression began 9 minutes after the deploy."), "9 minutes");
    push(l("Its own time per call rose from 7.1 ms to 52 ms."), "52 ms");
    push(l("About 4,500 requests ran on 7.4.0."), "4,500");
    push(l("The perf gate measured p95 +3.5% in staging."), "3.5%");
    push(l("The release reached 73% of requests."), "73%");
    push(l("The p95 is now 2.4 s."), "2.4 s");
    push(l("Pricing's p95 grew 11 times."), "11 times");
    push(e("`POST /v1/payments/authorize` in `payments` now fails 21.5% of its calls, against 0.4% before."), "21.5%");
    push(e("412 calls failed against 19 in the baseline."), "19");
    push(e("The error rate rose 12 percentage points to 16.4%."), "16.4%");
    push(e("The failures began 7 minutes after payments 3.5.0 was deployed."), "7 minutes");

    // Wrong numbers written in words, and counts followed by a word that
    // starts like a unit.
    push(l("Its p95 grew about nine times."), "nine times");
    push(l("The p95 is now ninety-five ms."), "ninety-five ms");
    push(l("The regression began nine minutes after the deploy."), "nine minutes");
    push(l("Quotes were twice as slow after the deploy."), "twice");
    push(e("About four thousand calls failed."), "four thousand");
    push(l("About 9,999 sessions were affected."), "9,999");
    push(e("It failed for 1,234 shoppers."), "1,234");

    // Times and dates that are not the evidence's.
    push(l("The onset was at 11:24 UTC."), "11:24");
    push(l("Pricing 7.4.0 was deployed at 10:58 UTC."), "10:58");
    push(l("This started on 2026-11-19."), "2026-11-19");
    push(e("Payments started failing at 17:52 UTC."), "17:52");

    // Invented ids.
    push(l("See trace 4f1d2c3b4a5968778695a4b3c2d1e0f9 for an example."), "4f1d2c3b4a5968778695a4b3c2d1e0f9");
    push(l("Trace 1805cabea6f570877b4010bc46826700 shows the slow call."), "1805cabea6f570877b4010bc46826700");
    push(l("The change is commit 9f8e7d6."), "9f8e7d6");
    push(l("It was merged in PR #4871."), "4871");
    push(l("It was merged as pull request 4416."), "4416");
    push(l("This repeats inc-0011223344556677."), "inc-0011223344556677");
    push(e("Span 0a1b2c3d4e5f6071 is the first failure."), "0a1b2c3d4e5f6071");
    push(e("The release is commit e5f1a9d."), "e5f1a9d");
    push(e("It shipped in PR #2219."), "2219");

    // Wrong versions.
    push(l("The release was pricing 7.4.1."), "7.4.1");
    push(l("Rolling back to 7.3.1 restores the old behaviour."), "7.3.1");
    push(e("Payments 3.5.1 is failing card authorizations."), "3.5.1");
    push(e("The failures began with payments 3.6.0."), "3.6.0");

    // Invented services and operations, and invented callers.
    push(l("Callers `basket` and `web` are slow only while waiting on pricing."), "basket");
    push(l("Callers checkout-api and storefront are slow only while waiting on pricing."), "checkout-api");
    push(l("The quote-engine service is where the time goes."), "quote-engine");
    push(l("`GET /v1/quotes/bulk` is slow too."), "/v1/quotes/bulk");
    push(l("POST /v1/quote also slowed down."), "POST /v1/quote");
    push(l("POST /v1/quote is 40 ms slower as well."), "POST /v1/quote");
    push(l("Inventory is slow as well while waiting on pricing."), "inventory");
    push(l("The slowdown also reached search."), "search");
    push(e("Callers such as shipping and checkout see the failures."), "shipping");
    push(e("The ledger service rejects the tokens."), "ledger");
    push(e("`POST /v1/payments/capture` fails as well."), "/v1/payments/capture");
    push(e("Accounts fails alongside payments."), "accounts");

    // Causal chains the evidence does not support.
    push(l("The regression was caused by a database connection pool exhaustion."), "cause");
    push(l("Checkout caused the slowdown in pricing by sending larger carts."), "checkout");
    push(l("Frontend's retry storm led to the latency regression on `GET /v1/quote`."), "frontend");
    push(l("The slowdown is due to a garbage-collection pause in the JVM."), "cause");
    push(l("Because cart sends more line items, pricing is slow."), "cart");
    push(l("The slow quotes caused pricing 7.4.0 to be rolled out."), "other way");
    push(l("Pricing 7.4.0 caused checkout to fail."), "failures");
    push(l("The release caused errors on `GET /v1/quote`."), "failures");
    push(l("Pricing 7.3.2 caused the regression."), "7.3.2");
    push(
        l("The regression resulted from network congestion between frontend and pricing, not from pricing itself."),
        "frontend",
    );
    push(e("The failures are due to an expired TLS certificate on the card network."), "network");
    push(e("Frontend caused the payment failures by sending malformed requests."), "frontend");
    push(e("Payments 3.5.0 made authorizations slow, which led to timeouts in checkout."), "slow");
    push(e("Payments 3.5.0 caused the errors because the inventory service ran out of stock."), "inventory");
    push(e("The change in checkout caused payments to fail."), "checkout");
    push(l("A memory leak in pricing 7.4.0 caused the slowdown."), "memory");
    push(l("The regression is due to a missing database index in pricing 7.4.0."), "database");
    push(e("Payments 3.5.0 caused the failures by exhausting its connection pool."), "connection");

    // Numbers and ids from another incident (the similar one, and the other fixture).
    push(l("As in the last incident, p95 rose by 212%."), "212%");
    push(l("It began at 08:40 UTC, like last time."), "08:40");
    push(l("412 of its calls failed."), "412");
    push(l("The regression matches payments 3.5.0."), "3.5.0");
    push(l("Trace 9c1e0b7a2f3d4c5b6a7980e1d2c3b4a5 shows it."), "9c1e0b7a2f3d4c5b6a7980e1d2c3b4a5");
    push(e("Its p95 went from 15.6 ms to 89.5 ms."), "15.6");
    push(e("It was merged in PR #4817."), "4817");
    out
}

/// Faithful narratives in varied wording: every claim is in the evidence.
fn faithful() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "latency_incident",
            "The p95 latency regression on `GET /v1/quote` in `pricing` began at 11:11 UTC, as pricing 7.4.0 (commit 964101d, PR #4817) rolled out. Its p95 went from 15.6 ms to 89.5 ms. Its perf-staging gate reported p95 +1.5% on synthetic load; production shows +473% on the same route. Callers `cart`, `catalog`, `checkout`, `frontend` and `web` are slow only while waiting on pricing.",
        ),
        (
            "latency_incident",
            "Since 11:11 UTC, `GET /v1/quote` on `pricing` has been about 5.7 times slower at the 95th percentile (15.6 ms before, 89.5 ms now). The slowdown was caused by pricing 7.4.0, deployed at 11:12 UTC from PR #4817, which evaluates promotional price rules per line item. The traces put the extra time inside pricing itself: its own time per call rose from 7.1 ms to 39.5 ms. perf-staging passed because it ran on synthetic load with 2,000 requests, which does not reproduce production's.",
        ),
        (
            "latency_incident",
            "Pricing 7.4.0 is the likely cause: the p95 of `GET /v1/quote` jumped by roughly 473% (15.6 ms to 89.5 ms) starting 11:11 UTC, a minute before its rollout was recorded at 11:12 UTC. Rolling back to 7.3.2 should restore the previous latency. Trace 1805cabea6f570877b4010bc468267a8 is a good starting point.",
        ),
        (
            "latency_incident",
            "Users calling `GET /v1/quote` waited longer from 11:11 UTC: p95 rose from 15.6 ms to 89.5 ms. The change linked to it is `pricing` 7.4.0 (commit 964101de, confidence 0.93). Its gates all passed; the perf gate measured only +1.5% on a synthetic dataset. The `checkout` and `web` callers are slow only because they wait on pricing.",
        ),
        (
            "latency_incident",
            "Between 11:00 and 12:00 UTC the quote endpoint of the pricing service regressed: p95 89.5 ms against 15.6 ms in the baseline. The regression follows the deployment of pricing 7.4.0 (PR #4817, by jchen). Requests overall took 122.2 ms on average against 104.8 ms. Code review approved it with 2 reviewers and the perf-staging check saw +1.5%.",
        ),
        (
            "latency_incident",
            "The latency regression in `pricing` (`GET /v1/quote`) is due to 7.4.0, which rolled out at 11:12 UTC. p95 went up about 74 ms, from 15.6 ms to 89.5 ms, and 9036 requests on 7.4.0 had a p95 of 95.8 ms against 16.1 ms on 7.3.2.",
        ),
        (
            "latency_incident",
            "At 11:11 UTC the p95 of `GET /v1/quote` began to climb, reaching 89.5 ms from 15.6 ms. This was triggered by the pricing release 7.4.0 (commit 964101d). Perf-staging missed it because its conditions (synthetic load, 2,000 requests) do not reproduce production's.",
        ),
        (
            "latency_incident",
            "The pricing deploy 7.4.0 led to a p95 latency regression on `GET /v1/quote`: 15.6 ms to 89.5 ms since 11:11 UTC. Fix forward in what PR #4817 changed, or roll back to 7.3.2.",
        ),
        (
            "latency_incident",
            "Since 11:11 UTC quotes from `pricing` take about six times as long at the p95, 15.6 ms before against 89.5 ms now, after pricing 7.4.0 rolled out; two of its gates passed it.",
        ),
        (
            "error_incident",
            "`POST /v1/payments/authorize` in `payments` has failed 12.4% of its calls since 17:36 UTC, against 0.4% in the baseline, as payments 3.5.0 (commit e5f1a9c, PR #2291) rolled out at 17:36 UTC. Its contract-tests gate was skipped and the change shipped anyway. Checkout sees the failures at `POST /checkout/payment`.",
        ),
        (
            "error_incident",
            "The failures of `POST /v1/payments/authorize` were caused by payments 3.5.0 (PR #2291). 412 of its calls failed against 9 in the baseline, and the failures start in payments itself. The release went out at 17:36 UTC, 40 s before the onset. Rolling back to 3.4.2 is the quickest remedy.",
        ),
        (
            "error_incident",
            "Since 17:36 UTC about one in eight card authorizations fails (12.4%, up from 0.4%) after payments 3.5.0 shipped with its contract tests skipped. The frontend's `POST /checkout/payment` failures follow payments': 37 of 41 failing calls wait on it. Trace 9c1e0b7a2f3d4c5b6a7980e1d2c3b4a5 shows one.",
        ),
        (
            "error_incident",
            "Payments 3.5.0 led to an error-rate regression on `POST /v1/payments/authorize`: its error rate rose 12 percentage points, from 0.4% to 12.4%. The link has confidence 0.88. Contract-tests was skipped and the change shipped anyway; make it required for payments.",
        ),
    ]
}

#[test]
fn every_planted_claim_is_rejected_for_what_was_planted() {
    let planted = planted();
    assert!(planted.len() >= 60, "the corpus has {} planted claims", planted.len());
    let lat = evidence("latency_incident");
    let err = evidence("error_incident");
    // The faithful opening the latency plants are spliced into is itself clean.
    assert!(lat.check(LATENCY_OK).is_empty(), "{:?}", lat.check(LATENCY_OK));
    let mut missed = Vec::new();
    for (which, draft, key) in &planted {
        let e = if *which == "latency_incident" { &lat } else { &err };
        let v = e.check(draft);
        let hit = v.iter().any(|v| v.text.contains(key) || v.reason.contains(key));
        if !hit {
            missed.push(format!("{draft}\n    violations: {v:?}"));
        }
    }
    let caught = planted.len() - missed.len();
    println!(
        "planted claims rejected: {caught} of {} ({:.1}%)",
        planted.len(),
        100.0 * caught as f64 / planted.len() as f64
    );
    assert!(missed.is_empty(), "planted claims accepted or rejected for something else:\n{}", missed.join("\n"));
}

#[test]
fn faithful_narratives_in_varied_wording_are_accepted() {
    let lat = evidence("latency_incident");
    let err = evidence("error_incident");
    let all = faithful();
    let mut rejected = Vec::new();
    for (which, draft) in &all {
        let e = if *which == "latency_incident" { &lat } else { &err };
        let v = e.check(draft);
        if !v.is_empty() {
            rejected.push(format!("{draft}\n    violations: {v:?}"));
        }
    }
    let ok = all.len() - rejected.len();
    println!("faithful narratives accepted: {ok} of {} ({:.1}%)", all.len(), 100.0 * ok as f64 / all.len() as f64);
    assert!(rejected.is_empty(), "faithful narratives rejected:\n{}", rejected.join("\n"));
}

#[test]
fn the_template_narrative_passes_its_own_validator() {
    for name in ["latency_incident", "error_incident"] {
        let inc = incident(name);
        let text = andon_rca::TemplateNarrator.write(&inc);
        let v = evidence(name).check(&text);
        assert!(v.is_empty(), "{name}: the template wrote {text:?}, rejected for {v:?}");
    }
}

#[test]
fn a_report_lists_what_the_rejected_draft_claimed() {
    let mut inc = incident("latency_incident");
    let draft = format!("{LATENCY_OK} The ledger service caused it.");
    let violations = evidence("latency_incident").check(&draft);
    assert!(!violations.is_empty());
    inc.narrative_validation =
        Some(andon_model::NarrativeValidation { accepted: false, attempts: 3, violations, error: None });
    let md = andon_rca::report::markdown(&inc);
    assert!(md.contains("claimed without support") && md.contains("ledger"), "{md}");
    let html = andon_rca::report::html(&inc);
    assert!(html.contains("claimed without support") && html.contains("ledger"), "{html}");
    inc.narrative_validation = Some(andon_model::NarrativeValidation {
        accepted: false,
        attempts: 0,
        violations: Vec::new(),
        error: Some("model big-model timed out after 2 s".into()),
    });
    assert!(andon_rca::report::markdown(&inc).contains("timed out after 2 s"));
}
