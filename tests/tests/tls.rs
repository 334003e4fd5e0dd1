//! TLS on all three ports through the real binary, with certificates made by
//! the test: HTTPS on the API and the UI (with a `Secure` session cookie),
//! OTLP/HTTP and OTLP/gRPC that require a client certificate from the
//! configured CA besides the bearer token, the real Python exporter over both,
//! the CLI over HTTPS, a client that never finishes its handshake not holding
//! up others, and a renewed certificate served after SIGHUP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use andon_tests::{Server, andon_bin, otlp, workspace_root};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use reqwest::blocking::Client;
use reqwest::{Certificate, Identity, StatusCode};
use serde_json::{Value, json};

const INGEST: &str = "ingest-secret-0123456789abcdef";
const READ: &str = "read-secret-0123456789abcdef";

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate and key signed by `ca`, as PEM.
fn leaf(ca: &CertifiedIssuer<'_, KeyPair>, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    other_ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let pki = Pki { dir: dir.to_path_buf(), ca: ca("Andon test CA"), other_ca: ca("Somebody else's CA") };
        pki.write("ca.pem", &pki.ca.pem());
        pki.write("other-ca.pem", &pki.other_ca.pem());
        let (cert, key) = leaf(&pki.ca, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
        pki.write("server.pem", &cert);
        pki.write("server-key.pem", &key);
        let (cert, key) = leaf(&pki.ca, &["checkout-collector"], ExtendedKeyUsagePurpose::ClientAuth);
        pki.write("client.pem", &cert);
        pki.write("client-key.pem", &key);
        let (cert, key) = leaf(&pki.other_ca, &["intruder"], ExtendedKeyUsagePurpose::ClientAuth);
        pki.write("rogue.pem", &cert);
        pki.write("rogue-key.pem", &key);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.path(name), pem).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn config(&self) -> String {
        format!(
            r#"
[tls]
cert_file = "{}"
key_file = "{}"
client_ca_file = "{}"

[[auth.tokens]]
name = "checkout-collector"
role = "ingest"
tenant = "shop"
token_env = "TEST_TOKEN_INGEST"

[[auth.tokens]]
name = "dashboards"
role = "read"
token_env = "TEST_TOKEN_READ"
"#,
            self.path("server.pem").display(),
            self.path("server-key.pem").display(),
            self.path("ca.pem").display()
        )
    }

    /// A client that trusts only `ca_file` and presents `identity` (a
    /// certificate and key file pair) when given one.
    fn client(&self, ca_file: &str, identity: Option<(&str, &str)>) -> Client {
        andon_model::install_tls_provider();
        let mut b = Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_only([Certificate::from_pem(&self.read(ca_file)).unwrap()]);
        if let Some((cert, key)) = identity {
            let mut pem = self.read(cert);
            pem.extend_from_slice(&self.read(key));
            b = b.identity(Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}

fn start(pki: &Pki, dir: &Path) -> Server {
    Server::start_with_config(
        &dir.join("data"),
        &pki.config(),
        &[("TEST_TOKEN_INGEST", INGEST), ("TEST_TOKEN_READ", READ)],
    )
}

fn https(addr: &str, path: &str) -> String {
    format!("https://{addr}{path}")
}

fn export(client: &Client, server: &Server, token: Option<&str>, service: &str) -> reqwest::Result<StatusCode> {
    let body = otlp::request(service, 7, 5, otlp::now_ns()).encode_to_vec();
    let mut req =
        client.post(https(&server.http, "/v1/traces")).header("content-type", "application/x-protobuf").body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().map(|r| r.status())
}

fn spans_of(client: &Client, server: &Server, tenant: &str, service: &str) -> i64 {
    let resp = client
        .post(https(&server.api, "/api/v1/query"))
        .bearer_auth(READ)
        .header("x-scope-orgid", tenant)
        .json(&json!({"sql": format!("SELECT count(*) FROM spans WHERE service_name = '{service}'")}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().unwrap();
    v["rows"][0][0].as_i64().unwrap()
}

#[test]
fn every_port_speaks_tls_and_the_otlp_ports_require_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = start(&pki, dir.path());
    let trusted = pki.client("ca.pem", None);
    let collector = pki.client("ca.pem", Some(("client.pem", "client-key.pem")));
    let rogue = pki.client("ca.pem", Some(("rogue.pem", "rogue-key.pem")));

    // The API and the UI: HTTPS without a client certificate (browsers have none).
    let r = trusted.get(https(&server.api, "/api/v1/findings")).bearer_auth(READ).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Plain HTTP on a TLS port gets no answer, and neither does a client that
    // does not trust the server's CA.
    assert!(Client::new().get(format!("http://{}/readyz", server.api)).send().is_err());
    assert!(pki.client("other-ca.pem", None).get(https(&server.api, "/readyz")).send().is_err());
    // Under TLS the session cookie is `Secure`.
    let r = trusted
        .post(https(&server.api, "/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={READ}"))
        .send()
        .unwrap();
    let cookie = r.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(cookie.contains("andon_session=") && cookie.contains("Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // OTLP/HTTP: a certificate from the configured CA and a token, both.
    assert_eq!(export(&collector, &server, Some(INGEST), "tls-http").unwrap(), StatusCode::OK);
    assert_eq!(spans_of(&trusted, &server, "shop", "tls-http"), 5);
    assert_eq!(export(&collector, &server, None, "tls-http").unwrap(), StatusCode::UNAUTHORIZED);
    assert!(export(&trusted, &server, Some(INGEST), "no-cert").is_err(), "no client certificate");
    assert!(export(&rogue, &server, Some(INGEST), "rogue").is_err(), "a certificate from another CA");
    assert_eq!(spans_of(&trusted, &server, "shop", "no-cert") + spans_of(&trusted, &server, "shop", "rogue"), 0);

    // A client that opens connections and never finishes a handshake holds up
    // no one: each handshake runs on its own, under a deadline.
    let idle: Vec<std::net::TcpStream> = (0..50).map(|_| std::net::TcpStream::connect(&server.http).unwrap()).collect();
    assert_eq!(export(&collector, &server, Some(INGEST), "beside-idle").unwrap(), StatusCode::OK);
    drop(idle);

    // The CLI over HTTPS: `query` with the CA to trust, `import` with the
    // client certificate as well.
    let file = dir.path().join("spans.jsonl");
    let req = otlp::request("tls-import", 9, 4, otlp::now_ns());
    std::fs::write(&file, serde_json::to_string(&req).unwrap() + "\n").unwrap();
    let out = Command::new(andon_bin())
        .args(["import", "--endpoint", &https(&server.http, ""), file.to_str().unwrap()])
        .env("ANDON_CA_FILE", pki.path("ca.pem"))
        .env("ANDON_CLIENT_CERT_FILE", pki.path("client.pem"))
        .env("ANDON_CLIENT_KEY_FILE", pki.path("client-key.pem"))
        .env("ANDON_TOKEN", INGEST)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(andon_bin())
        .args(["query", "--server", &https(&server.api, ""), "--tenant", "shop", "--format", "json"])
        .arg("SELECT count(*) AS n FROM spans WHERE service_name = 'tls-import'")
        .env("ANDON_CA_FILE", pki.path("ca.pem"))
        .env("ANDON_TOKEN", READ)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows, json!([{"n": 4}]));

    // The real Python exporter, over gRPC and HTTP, with TLS, a client
    // certificate and a token.
    let Ok(python) = std::env::var("ANDON_TEST_PYTHON") else {
        assert!(std::env::var_os("CI").is_none(), "ANDON_TEST_PYTHON must be set in CI");
        eprintln!("skipping the Python exporter: ANDON_TEST_PYTHON is not set");
        return;
    };
    let script = workspace_root().join("tests/python/export_spans.py");
    for (proto, endpoint, service) in
        [("grpc", https(&server.grpc, ""), "py-grpc-tls"), ("http", https(&server.http, "/v1/traces"), "py-http-tls")]
    {
        let out = Command::new(&python)
            .arg(&script)
            .args([proto, &endpoint, service])
            .env("ANDON_TEST_CA", pki.path("ca.pem"))
            .env("ANDON_TEST_CLIENT_CERT", pki.path("client.pem"))
            .env("ANDON_TEST_CLIENT_KEY", pki.path("client-key.pem"))
            .env("ANDON_TEST_TOKEN", INGEST)
            // `requests` lets these override the CA the exporter is given
            // (its session's `verify`), so a machine that sets them would
            // check the server against the system's CAs instead.
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // The exporter reports failures only in its log: the spans must be there.
        let stored =
            andon_tests::wait_for(Duration::from_secs(20), || spans_of(&trusted, &server, "shop", service) == 4);
        assert!(stored, "{proto}: the spans did not arrive\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let server = start(&pki, dir.path());
    // A new client (a new connection) each time: connections already open
    // keep the certificate they started with.
    let (old, new) = ("ca.pem", "other-ca.pem");
    let ready =
        |ca: &str| pki.client(ca, None).get(https(&server.api, "/readyz")).send().map(|r| r.status() == StatusCode::OK);
    assert!(ready(old).unwrap());
    assert!(ready(new).is_err());

    // A half-written renewal: the server keeps its certificate.
    pki.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
    let hup = || assert!(Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap().success());
    hup();
    std::thread::sleep(Duration::from_millis(500));
    assert!(ready(old).unwrap(), "a broken renewal replaced the certificate");

    // The renewal, signed by another CA: new connections get it.
    let (cert, key) = leaf(&pki.other_ca, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    pki.write("server.pem", &cert);
    pki.write("server-key.pem", &key);
    hup();
    assert!(andon_tests::wait_for(Duration::from_secs(10), || ready(new).unwrap_or(false)), "not reloaded");
    assert!(ready(old).is_err());
}
