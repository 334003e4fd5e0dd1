//! A real S3 API server for tests and benchmarks: moto (from PyPI) in server
//! mode on a loopback port, with the environment `andon serve` needs to keep
//! its segments in one of its buckets.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::reqwest::blocking_client;
use crate::wait_for;

/// `moto_server` on a loopback port; killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts moto with `python` on `port` and waits until it answers.
    pub fn start(python: &str, port: u16) -> Moto {
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto server starts");
        let url = format!("http://127.0.0.1:{port}/");
        assert!(
            wait_for(Duration::from_secs(60), || blocking_client().get(url.clone()).send().is_ok()),
            "moto server answers on port {port}"
        );
        Moto { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let r = blocking_client().put(self.url(&format!("/{bucket}"))).send().expect("bucket created");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// Keys and sizes of the objects under `prefix` in `bucket`.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let body = blocking_client()
            .get(self.url(&format!("/{bucket}?list-type=2&prefix={prefix}")))
            .send()
            .map(|r| r.text())
            .expect("bucket listed");
        body.split("<Contents>")
            .skip(1)
            .map(|c| {
                let field = |name: &str| {
                    let open = format!("<{name}>");
                    let start = c.find(&open).map(|i| i + open.len()).expect("field in listing");
                    c[start..].split('<').next().unwrap_or_default().to_owned()
                };
                (field("Key"), field("Size").parse().expect("size"))
            })
            .collect()
    }

    /// The AWS variables that point an S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "andon-test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "andon-test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.url("")),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The Python interpreter with moto that `ANDON_TEST_PYTHON` names, or `None`
/// (and a note) outside CI; in CI its absence is a failure.
pub fn python_with_moto() -> Option<String> {
    let Ok(python) = std::env::var("ANDON_TEST_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "ANDON_TEST_PYTHON must be set in CI");
        eprintln!("skipping: ANDON_TEST_PYTHON is not set");
        return None;
    };
    let ok = Command::new(&python).args(["-c", "import moto.server"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{python} lacks moto (tests/python/requirements.txt installs it)");
    Some(python)
}
