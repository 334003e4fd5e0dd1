//! A GitHub API twin: the REST endpoints Andon's GitHub sink calls, answering
//! with bodies shaped like GitHub's (every field octocrab's `Issue`, `Comment`,
//! `Author` and `Label` models require), recording every request, and failing
//! on demand: 5xx answers, rate limits, or an issue created and then no answer
//! until the client has given up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// A request the twin received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub authorization: Option<String>,
    pub at: Instant,
    /// Answered with a planned failure, a rate limit or a 401.
    pub refused: bool,
}

/// What the twin does to the next requests instead of answering normally.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Answer with this status (a 502, say).
    Status(u16),
    /// GitHub's primary rate limit: 403, `x-ratelimit-remaining: 0` and a
    /// reset this many seconds ahead.
    RateLimit { reset_in_secs: u64 },
    /// A secondary rate limit: 429 with `retry-after`.
    RetryAfter { secs: u64 },
    /// Create the issue (or comment), then answer only after this long.
    TimeoutAfterWrite(Duration),
}

#[derive(Debug, Clone)]
pub struct TwinIssue {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    pub open: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TwinComment {
    pub id: u64,
    pub issue: u64,
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// A pull request the twin knows, by the commit it merged.
#[derive(Debug, Clone)]
pub struct TwinPull {
    pub commit: String,
    pub number: u64,
    pub title: String,
    pub login: String,
}

/// A check run on a commit.
#[derive(Debug, Clone)]
pub struct TwinCheckRun {
    pub commit: String,
    pub name: String,
    pub conclusion: String,
    pub title: String,
}

#[derive(Debug, Default)]
pub struct TwinState {
    pub issues: Vec<TwinIssue>,
    pub pulls: Vec<TwinPull>,
    pub check_runs: Vec<TwinCheckRun>,
    pub comments: Vec<TwinComment>,
    pub requests: Vec<Recorded>,
    failures: VecDeque<Failure>,
    /// No request is answered normally before this (a rate limit's reset).
    limited_until: Option<(Instant, DateTime<Utc>)>,
}

/// The running twin; it stops when dropped.
#[derive(Debug)]
pub struct GitHubTwin {
    /// The API base URL, with a GitHub Enterprise style `/api/v3` prefix.
    pub url: String,
    pub token: String,
    state: Arc<Mutex<TwinState>>,
    _runtime: tokio::runtime::Runtime,
}

type Shared = (Arc<Mutex<TwinState>>, String, String);

impl GitHubTwin {
    pub fn start() -> GitHubTwin {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("twin runtime");
        let state = Arc::new(Mutex::new(TwinState::default()));
        let token = "ghp_twinTOKENtwinTOKENtwinTOKEN0000".to_owned();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind twin");
        let addr = listener.local_addr().expect("twin addr");
        let base = format!("http://{addr}");
        let shared: Shared = (Arc::clone(&state), base.clone(), token.clone());
        let app = Router::new()
            .route("/api/v3/repos/{owner}/{repo}/issues", get(list_issues).post(create_issue))
            .route("/api/v3/repos/{owner}/{repo}/issues/{number}", get(get_issue).patch(patch_issue))
            .route("/api/v3/repos/{owner}/{repo}/issues/{number}/comments", get(list_comments).post(create_comment))
            .route("/api/v3/repos/{owner}/{repo}/commits/{sha}/pulls", get(commit_pulls))
            .route("/api/v3/repos/{owner}/{repo}/pulls/{number}", get(get_pull))
            .route("/api/v3/repos/{owner}/{repo}/commits/{sha}/check-runs", get(check_runs))
            .fallback(fallback)
            .with_state(shared);
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHubTwin { url: format!("{base}/api/v3"), token, state, _runtime: runtime }
    }

    pub fn state(&self) -> MutexGuard<'_, TwinState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `n` requests get `f`.
    pub fn fail_next(&self, n: usize, f: Failure) {
        let mut s = self.state();
        for _ in 0..n {
            s.failures.push_back(f.clone());
        }
    }

    /// Drops the planned failures that have not happened yet.
    pub fn recover(&self) {
        self.state().failures.clear();
    }

    pub fn issues(&self) -> Vec<TwinIssue> {
        self.state().issues.clone()
    }

    pub fn comments(&self) -> Vec<TwinComment> {
        self.state().comments.clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// A person closes issue `number` on GitHub.
    pub fn close(&self, number: u64, by: &str) {
        let mut s = self.state();
        let now = Utc::now();
        if let Some(i) = s.issues.iter_mut().find(|i| i.number == number) {
            i.open = false;
            i.closed_at = Some(now);
            i.closed_by = Some(by.to_owned());
            i.updated_at = now;
        }
    }
}

fn user(base: &str, login: &str) -> Value {
    let u = format!("{base}/users/{login}");
    json!({
        "login": login, "id": 1, "node_id": "MDQ6VXNlcjE=",
        "avatar_url": format!("{base}/avatars/{login}"), "gravatar_id": "",
        "url": u, "html_url": format!("{base}/{login}"),
        "followers_url": format!("{u}/followers"), "following_url": format!("{u}/following{{/other_user}}"),
        "gists_url": format!("{u}/gists{{/gist_id}}"), "starred_url": format!("{u}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{u}/subscriptions"), "organizations_url": format!("{u}/orgs"),
        "repos_url": format!("{u}/repos"), "events_url": format!("{u}/events{{/privacy}}"),
        "received_events_url": format!("{u}/received_events"), "type": "User", "site_admin": false,
        "name": null, "patch_url": null
    })
}

fn issue_json(base: &str, owner: &str, repo: &str, i: &TwinIssue, comments: usize) -> Value {
    let repo_url = format!("{base}/api/v3/repos/{owner}/{repo}");
    let url = format!("{repo_url}/issues/{}", i.number);
    let labels: Vec<Value> = i
        .labels
        .iter()
        .enumerate()
        .map(|(n, l)| {
            json!({"id": n as u64 + 100, "node_id": format!("LA_{n}"), "url": format!("{repo_url}/labels/{n}"),
                   "name": l, "color": "ededed", "default": false, "description": null})
        })
        .collect();
    json!({
        "id": 1000 + i.number, "node_id": format!("I_{}", i.number), "url": url,
        "repository_url": repo_url, "labels_url": format!("{url}/labels{{/name}}"),
        "comments_url": format!("{url}/comments"), "events_url": format!("{url}/events"),
        "html_url": format!("{base}/{owner}/{repo}/issues/{}", i.number),
        "number": i.number, "state": if i.open { "open" } else { "closed" },
        "state_reason": if i.open { Value::Null } else { json!("completed") },
        "title": i.title, "body": i.body, "user": user(base, "andon-bot"), "labels": labels,
        "assignee": null, "assignees": [], "author_association": "NONE", "milestone": null,
        "locked": false, "active_lock_reason": null, "comments": comments,
        "closed_at": i.closed_at, "closed_by": i.closed_by.as_deref().map(|b| user(base, b)),
        "created_at": i.created_at, "updated_at": i.updated_at,
    })
}

fn comment_json(base: &str, owner: &str, repo: &str, c: &TwinComment) -> Value {
    let url = format!("{base}/api/v3/repos/{owner}/{repo}/issues/comments/{}", c.id);
    json!({
        "id": c.id, "node_id": format!("IC_{}", c.id), "url": url,
        "html_url": format!("{base}/{owner}/{repo}/issues/{}#issuecomment-{}", c.issue, c.id),
        "issue_url": format!("{base}/api/v3/repos/{owner}/{repo}/issues/{}", c.issue),
        "body": c.body, "user": user(base, "andon-bot"), "author_association": "NONE",
        "created_at": c.created_at, "updated_at": c.created_at,
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})))
        .into_response()
}

/// Records the request, checks the token and applies a planned failure. A
/// `TimeoutAfterWrite` is returned for the handler to act on after writing.
#[allow(clippy::result_large_err)] // the error is the answer itself, sent at once
fn admit(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Option<Duration>, Response> {
    let (state, _, token) = shared;
    let mut s = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.requests.push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        authorization: authorization.clone(),
        at: Instant::now(),
        refused: true,
    });
    let expected = [format!("Bearer {token}"), format!("token {token}")];
    if !authorization.as_ref().is_some_and(|a| expected.contains(a)) {
        return Err(error(StatusCode::UNAUTHORIZED, "Bad credentials"));
    }
    if let Some((until, reset)) = s.limited_until {
        if Instant::now() < until {
            return Err(rate_limited(reset));
        }
        s.limited_until = None;
    }
    // A stalled answer is for a write: reads pass it by.
    if matches!(s.failures.front(), Some(Failure::TimeoutAfterWrite(_))) && method == Method::GET {
        if let Some(r) = s.requests.last_mut() {
            r.refused = false;
        }
        return Ok(None);
    }
    let out = match s.failures.pop_front() {
        None => Ok(None),
        Some(Failure::Status(code)) => {
            Err(error(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY), "Server Error"))
        }
        Some(Failure::RateLimit { reset_in_secs }) => {
            // GitHub's reset is a whole second; the limit lifts exactly then.
            let now = Utc::now();
            let reset_secs = now.timestamp() + reset_in_secs as i64;
            let reset = DateTime::from_timestamp(reset_secs, 0).unwrap_or(now);
            let left = (reset - now).to_std().unwrap_or_default();
            s.limited_until = Some((Instant::now() + left, reset));
            Err(rate_limited(reset))
        }
        Some(Failure::RetryAfter { secs }) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "You have exceeded a secondary rate limit");
            r.headers_mut().insert("retry-after", secs.to_string().parse().expect("header"));
            Err(r)
        }
        Some(Failure::TimeoutAfterWrite(d)) => Ok(Some(d)),
    };
    if out.is_ok()
        && let Some(r) = s.requests.last_mut()
    {
        r.refused = false;
    }
    out
}

fn rate_limited(reset: DateTime<Utc>) -> Response {
    let mut r = error(StatusCode::FORBIDDEN, "API rate limit exceeded for user ID 1.");
    let h = r.headers_mut();
    h.insert("x-ratelimit-limit", "5000".parse().expect("header"));
    h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
    h.insert("x-ratelimit-reset", reset.timestamp().to_string().parse().expect("header"));
    r
}

async fn stall(delay: Option<Duration>) {
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
}

#[derive(Debug, serde::Deserialize)]
struct ListParams {
    state: Option<String>,
    labels: Option<String>,
    since: Option<String>,
    direction: Option<String>,
    sort: Option<String>,
    per_page: Option<usize>,
    page: Option<usize>,
}

fn pull_json(base: &str, owner: &str, repo: &str, p: &TwinPull) -> Value {
    json!({
        "url": format!("{base}/api/v3/repos/{owner}/{repo}/pulls/{}", p.number),
        "number": p.number, "title": p.title, "state": "closed",
        "merged_at": "2026-11-20T09:00:00Z", "merge_commit_sha": p.commit,
        "user": {"login": p.login, "id": 1},
    })
}

async fn commit_pulls(
    State(shared): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &method, &uri, &headers, &Bytes::new()) {
        return r;
    }
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let list: Vec<Value> =
        s.pulls.iter().filter(|p| p.commit == sha).map(|p| pull_json(&shared.1, &owner, &repo, p)).collect();
    Json(list).into_response()
}

async fn get_pull(
    State(shared): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &method, &uri, &headers, &Bytes::new()) {
        return r;
    }
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match s.pulls.iter().find(|p| p.number == number) {
        Some(p) => Json(pull_json(&shared.1, &owner, &repo, p)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn check_runs(
    State(shared): State<Shared>,
    Path((_owner, _repo, sha)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &method, &uri, &headers, &Bytes::new()) {
        return r;
    }
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let runs: Vec<Value> = s
        .check_runs
        .iter()
        .filter(|c| c.commit == sha)
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": i + 1, "name": c.name, "status": "completed", "conclusion": c.conclusion,
                "html_url": format!("{}/checks/{}", shared.1, i + 1),
                "output": {"title": c.title, "summary": null},
            })
        })
        .collect();
    Json(json!({"total_count": runs.len(), "check_runs": runs})).into_response()
}

async fn list_issues(
    State(shared): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Query(p): Query<ListParams>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &method, &uri, &headers, &Bytes::new()) {
        return r;
    }
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let since = p.since.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
    let want: Vec<&str> = p.labels.as_deref().map(|l| l.split(',').collect()).unwrap_or_default();
    let mut list: Vec<&TwinIssue> = s
        .issues
        .iter()
        .filter(|i| match p.state.as_deref().unwrap_or("open") {
            "all" => true,
            "closed" => !i.open,
            _ => i.open,
        })
        .filter(|i| want.iter().all(|w| i.labels.iter().any(|l| l == w)))
        .filter(|i| since.is_none_or(|t| i.updated_at >= t))
        .collect();
    let by_updated = p.sort.as_deref() == Some("updated");
    list.sort_by_key(|i| if by_updated { i.updated_at } else { i.created_at });
    if p.direction.as_deref() != Some("asc") {
        list.reverse();
    }
    let per = p.per_page.unwrap_or(30).clamp(1, 100);
    let page = p.page.unwrap_or(1).max(1);
    let body: Vec<Value> = list
        .iter()
        .skip((page - 1) * per)
        .take(per)
        .map(|i| issue_json(&shared.1, &owner, &repo, i, s.comments.iter().filter(|c| c.issue == i.number).count()))
        .collect();
    axum::Json(body).into_response()
}

async fn create_issue(
    State(shared): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = match admit(&shared, &method, &uri, &headers, &body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let Some(title) = v.get("title").and_then(Value::as_str).filter(|t| !t.is_empty()) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed: title is missing");
    };
    let out = {
        let mut s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Utc::now();
        let issue = TwinIssue {
            number: s.issues.len() as u64 + 1,
            title: title.to_owned(),
            body: v.get("body").and_then(Value::as_str).unwrap_or_default().to_owned(),
            labels: v
                .get("labels")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            open: true,
            created_at: now,
            updated_at: now,
            closed_at: None,
            closed_by: None,
        };
        let out = issue_json(&shared.1, &owner, &repo, &issue, 0);
        s.issues.push(issue);
        out
    };
    stall(delay).await;
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

async fn get_issue(
    State(shared): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &method, &uri, &headers, &Bytes::new()) {
        return r;
    }
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match s.issues.iter().find(|i| i.number == number) {
        Some(i) => axum::Json(issue_json(&shared.1, &owner, &repo, i, 0)).into_response(),
        None => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn patch_issue(
    State(shared): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = match admit(&shared, &method, &uri, &headers, &body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let out = {
        let mut s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(i) = s.issues.iter_mut().find(|i| i.number == number) else {
            return error(StatusCode::NOT_FOUND, "Not Found");
        };
        let now = Utc::now();
        match v.get("state").and_then(Value::as_str) {
            Some("open") => {
                i.open = true;
                i.closed_at = None;
                i.closed_by = None;
            }
            Some("closed") => {
                i.open = false;
                i.closed_at = Some(now);
                i.closed_by = Some("andon-bot".into());
            }
            _ => {}
        }
        i.updated_at = now;
        issue_json(&shared.1, &owner, &repo, i, 0)
    };
    stall(delay).await;
    axum::Json(out).into_response()
}

async fn list_comments(
    State(shared): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(p): Query<ListParams>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&shared, &method, &uri, &headers, &Bytes::new()) {
        return r;
    }
    let s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let since = p.since.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
    let body: Vec<Value> = s
        .comments
        .iter()
        .filter(|c| c.issue == number && since.is_none_or(|t| c.created_at >= t))
        .map(|c| comment_json(&shared.1, &owner, &repo, c))
        .collect();
    axum::Json(body).into_response()
}

async fn create_comment(
    State(shared): State<Shared>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let delay = match admit(&shared, &method, &uri, &headers, &body) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(text) = v.get("body").and_then(Value::as_str) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed: body is missing");
    };
    let out = {
        let mut s = shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !s.issues.iter().any(|i| i.number == number) {
            return error(StatusCode::NOT_FOUND, "Not Found");
        }
        let now = Utc::now();
        let c =
            TwinComment { id: 5000 + s.comments.len() as u64, issue: number, body: text.to_owned(), created_at: now };
        let out = comment_json(&shared.1, &owner, &repo, &c);
        s.comments.push(c);
        if let Some(i) = s.issues.iter_mut().find(|i| i.number == number) {
            i.updated_at = now;
        }
        out
    };
    stall(delay).await;
    (StatusCode::CREATED, axum::Json(out)).into_response()
}

async fn fallback(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let _ = admit(&shared, &method, &uri, &headers, &body);
    error(StatusCode::NOT_FOUND, "Not Found")
}
