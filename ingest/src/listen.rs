//! Connections on the three ports, plain or over TLS, and the HTTP/1.1 server
//! of the OTLP/HTTP and API ports.
//!
//! [`Incoming`] accepts TCP connections and, when TLS is on, runs each
//! handshake in a task of its own under a deadline: a client that opens a
//! connection and never finishes its handshake holds one task, not the accept
//! loop. Accepted connections are queued for the HTTP server ([`serve_http`])
//! or the gRPC server (tonic's `serve_with_incoming`), which see the same
//! [`Conn`] either way.
//!
//! [`TlsConfig`] holds the rustls configuration of one port, built from PEM
//! files, and [`TlsConfig::reload`] swaps in a new one read from the same
//! files ([`TlsConfig::prepare`], then [`TlsConfig::install`], on SIGHUP):
//! connections already open keep the certificate they started with; a reload
//! that fails keeps the old configuration.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers once it has started.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their requests after a shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections accepted (handshake done) and not yet taken by the server.
const QUEUE: usize = 256;

/// The PEM files of `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CAs whose client certificates the OTLP ports require (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

/// What a port speaks over TLS, which decides its ALPN protocols and whether
/// it asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// OTLP/gRPC: HTTP/2, client certificates when a client CA is configured.
    OtlpGrpc,
    /// OTLP/HTTP: HTTP/1.1, client certificates when a client CA is configured.
    OtlpHttp,
    /// The API and UI: HTTP/1.1, never client certificates (browsers).
    Api,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("tls: {what} {path}: {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    /// rustls refused the certificate, key or CA.
    #[error("tls: {0}")]
    Rustls(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { what, path: path.to_path_buf(), reason: reason.to_string() }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration of `port` from `files`.
pub fn server_config(files: &TlsFiles, port: Port) -> Result<ServerConfig, TlsError> {
    let chain = certificates("cert_file", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| file_error("key_file", &files.key_file, e))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let client_ca = match port {
        Port::OtlpGrpc | Port::OtlpHttp => files.client_ca_file.as_deref(),
        Port::Api => None,
    };
    let builder = match client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("client_ca_file", path)? {
                roots.add(ca).map_err(|e| file_error("client_ca_file", path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error("client_ca_file", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("cert_file and key_file do not make a certificate: {e}")))?;
    config.alpn_protocols = match port {
        Port::OtlpGrpc => vec![b"h2".to_vec()],
        Port::OtlpHttp | Port::Api => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// The TLS configuration of one port, replaceable while it serves.
#[derive(Debug)]
pub struct TlsConfig {
    files: TlsFiles,
    port: Port,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsConfig {
    /// Reads `files` for `port`; fails on anything a handshake would fail on.
    pub fn load(files: TlsFiles, port: Port) -> Result<Arc<Self>, TlsError> {
        let config = server_config(&files, port)?;
        Ok(Arc::new(Self { files, port, current: RwLock::new(Arc::new(config)) }))
    }

    /// Reads the files again without using them yet.
    pub fn prepare(&self) -> Result<ServerConfig, TlsError> {
        server_config(&self.files, self.port)
    }

    /// Serves `config` to new connections from now on.
    pub fn install(&self, config: ServerConfig) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }
}

/// One accepted connection: plain TCP, or TLS with its handshake done.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Plain(_) => f.write_str("Conn::Plain"),
            Conn::Tls(_) => f.write_str("Conn::Tls"),
        }
    }
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.tcp();
        tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

/// The connections of one listening port, plain or over TLS.
pub struct Incoming {
    rx: mpsc::Receiver<(Conn, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("local", &self.local).finish()
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Incoming {
    /// Starts accepting on `listener`; with `tls`, each connection is handed
    /// on once its handshake is done within [`HANDSHAKE_TIMEOUT`].
    pub fn new(listener: TcpListener, tls: Option<Arc<TlsConfig>>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let accepting = tokio::spawn(accept_loop(listener, tls, tx));
        Ok(Self { rx, local, accepting })
    }

    /// The address the port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next connection, `None` once the accept loop has stopped.
    pub async fn next(&mut self) -> Option<(Conn, SocketAddr)> {
        self.rx.recv().await
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<Conn>> + Send + 'static {
        futures::stream::unfold(self, |mut incoming| async move {
            let (conn, _) = incoming.next().await?;
            Some((Ok(conn), incoming))
        })
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<TlsConfig>>, tx: mpsc::Sender<(Conn, SocketAddr)>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match &tls {
            None => {
                if tx.send((Conn::Plain(tcp), peer)).await.is_err() {
                    return;
                }
            }
            Some(config) => {
                let acceptor = config.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((Conn::Tls(Box::new(stream)), peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Serves `router` over HTTP/1.1 on `incoming` until `shutdown` resolves, then
/// lets requests in flight finish (for at most 30 s).
///
/// Unlike `axum::serve`, a client that sends a request's headers slowly is cut
/// off after [`HEADER_READ_TIMEOUT`], so slow clients hold no more than a
/// connection each, and only briefly.
pub async fn serve_http(
    mut incoming: Incoming,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (conn, peer) = tokio::select! {
            next = incoming.next() => match next {
                Some(accepted) => accepted,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(incoming);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        warn!("connections still open {} s after shutdown were closed", DRAIN_TIMEOUT.as_secs());
    }
    Ok(())
}
