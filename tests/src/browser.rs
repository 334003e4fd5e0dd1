//! A headless Chromium driven through ChromeDriver's W3C WebDriver endpoint, for
//! the web UI's tests: open pages, read what they show, fill in and submit
//! forms, run a line of script, and save screenshots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::reqwest::blocking_client;
use crate::wait_for;

/// The key WebDriver returns element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where ChromeDriver and Chromium are: `ANDON_TEST_CHROMEDRIVER` and
/// `ANDON_TEST_CHROMIUM` (set by `tests/run`, which installs Debian's
/// packages). `None` outside CI when they are not set; in CI their absence
/// fails the test.
pub fn tools() -> Option<(PathBuf, PathBuf)> {
    let driver = std::env::var_os("ANDON_TEST_CHROMEDRIVER").filter(|v| !v.is_empty());
    let chromium = std::env::var_os("ANDON_TEST_CHROMIUM").filter(|v| !v.is_empty());
    match (driver, chromium) {
        (Some(d), Some(c)) => Some((d.into(), c.into())),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "ANDON_TEST_CHROMEDRIVER and ANDON_TEST_CHROMIUM must be set in CI (tests/run sets them)"
            );
            None
        }
    }
}

#[derive(Debug)]
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl Browser {
    pub fn start(driver: &Path, chromium: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", driver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let ready = wait_for(Duration::from_secs(30), || {
            blocking_client()
                .get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        assert!(ready, "chromedriver did not start");
        let profile = tempfile::tempdir().expect("profile dir");
        // The flags keep Chromium off the network (this machine's is closed) and
        // out of first-run work.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let resp = blocking_client().post(format!("{base}/session")).json(&caps).send().expect("new session");
        let v = resp.json().expect("session json");
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_owned();
        Browser { driver: child, base, session, _profile: profile }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let resp = blocking_client().post(self.url(path)).json(&body).send().expect("webdriver answers");
        let v = resp.json().expect("webdriver json");
        assert!(resp.status().is_success(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    fn get(&self, path: &str) -> Value {
        let resp = blocking_client().get(self.url(path)).send().expect("webdriver answers");
        let v = resp.json().expect("webdriver json");
        assert!(resp.status().is_success(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    pub fn current_url(&self) -> String {
        self.get("/url").as_str().unwrap_or_default().to_owned()
    }

    pub fn title(&self) -> String {
        self.get("/title").as_str().unwrap_or_default().to_owned()
    }

    /// Every element matching a CSS selector.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.post("/elements", json!({"using": "css selector", "value": css}));
        v.as_array().into_iter().flatten().filter_map(|e| e[ELEMENT].as_str().map(str::to_owned)).collect()
    }

    /// The first element matching a CSS selector; panics when there is none.
    pub fn find(&self, css: &str) -> String {
        self.find_all(css).into_iter().next().unwrap_or_else(|| panic!("no element {css:?} on {}", self.current_url()))
    }

    /// The rendered text of an element.
    pub fn text(&self, element: &str) -> String {
        self.get(&format!("/element/{element}/text")).as_str().unwrap_or_default().to_owned()
    }

    /// The page's visible text.
    pub fn page_text(&self) -> String {
        self.text(&self.find("body"))
    }

    pub fn type_into(&self, element: &str, text: &str) {
        self.post(&format!("/element/{element}/value"), json!({ "text": text }));
    }

    pub fn click(&self, element: &str) {
        self.post(&format!("/element/{element}/click"), json!({}));
    }

    /// Clicks an element that leads to another page, and waits until the
    /// browser is there and the page has loaded: WebDriver's click may return
    /// before a form's POST and its redirect have finished, and the page read
    /// right after would still be the one clicked on. Panics, naming the page
    /// it stayed on, when no page `arrived` accepts has loaded within 30 s.
    pub fn click_to(&self, element: &str, arrived: impl Fn(&str) -> bool) {
        self.click(element);
        let loaded = wait_for(Duration::from_secs(30), || {
            arrived(&self.current_url()) && self.execute("return document.readyState") == "complete"
        });
        assert!(loaded, "the click led nowhere expected: still on {}", self.current_url());
    }

    /// Runs a script in the page and returns its result.
    pub fn execute(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
    }

    /// Saves the whole page as a PNG: the window is grown to the page's height
    /// first, since WebDriver captures the viewport.
    pub fn screenshot(&self, path: &Path) {
        let height = self.execute("return document.documentElement.scrollHeight").as_u64().unwrap_or(1000);
        self.post("/window/rect", json!({"width": 1400, "height": height.clamp(600, 6000) + 120}));
        let png = self.get("/screenshot");
        let bytes = decode_base64(png.as_str().expect("base64 screenshot"));
        std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        self.post("/window/rect", json!({"width": 1400, "height": 1000}));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = blocking_client().delete(self.url("")).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64, as WebDriver encodes screenshots.
fn decode_base64(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::decode_base64("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::decode_base64("YQ=="), b"a");
    }
}
