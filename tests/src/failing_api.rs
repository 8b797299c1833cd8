//! An HTTPS proxy in front of the test cluster's API server that answers chosen paths with
//! `503 Service Unavailable` until it is healed, and passes everything else through unchanged
//! (watches stream as they come). For faults a TCP proxy cannot place: one endpoint failing
//! while the rest of the API server works — the ServiceAccount issuer's discovery document at
//! an operator's start, for instance.
//!
//! It terminates TLS with the API server's own serving certificate (which names 127.0.0.1), so
//! a kubeconfig pointing at it keeps the cluster's CA and the client's token; each connection
//! it accepts gets one connection to the API server, over which its requests are forwarded in
//! turn (HTTP/1.1, as kube-rs speaks). Listens on 127.0.0.1:0.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Body = BoxBody<Bytes, hyper::Error>;

/// How long a TLS handshake on either side may take.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

pub struct FailingApiProxy {
    address: SocketAddr,
    failing: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

impl FailingApiProxy {
    /// A proxy to the API server at `api_server` (on this machine), its certificate and key and
    /// the cluster CA read from `pki`, answering requests for any of `failing_paths` with 503.
    pub async fn start(
        api_server: SocketAddr,
        pki: &Path,
        failing_paths: &'static [&'static str],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            api_server.ip().is_loopback(),
            "the proxy only forwards to loopback"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificates = CertificateDer::pem_file_iter(pki.join("apiserver.crt"))
            .context("the API server's certificate")?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(pki.join("apiserver.key"))
            .context("the API server's key")?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certificates, key)?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(pki.join("ca.crt"))? {
            roots.add(ca?)?;
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let connector = TlsConnector::from(Arc::new(client));

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let failing = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicU64::new(0));
        let (on, count) = (failing.clone(), refused.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((downstream, _)) = listener.accept().await {
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                let (on, count) = (on.clone(), count.clone());
                tokio::spawn(async move {
                    let _ = serve(
                        downstream,
                        acceptor,
                        connector,
                        api_server,
                        failing_paths,
                        on,
                        count,
                    )
                    .await;
                });
            }
        });
        Ok(Self {
            address,
            failing,
            refused,
            accepting,
        })
    }

    /// The URL to put in a kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// From now on every request passes through.
    pub fn heal(&self) {
        self.failing.store(false, Ordering::SeqCst);
    }

    /// How many requests it answered with 503.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for FailingApiProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// One client connection: TLS, then its requests in turn, each failed or forwarded over one
/// connection of its own to the API server.
async fn serve(
    downstream: TcpStream,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    api_server: SocketAddr,
    failing_paths: &'static [&'static str],
    failing: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let downstream = tokio::time::timeout(HANDSHAKE, acceptor.accept(downstream)).await??;
    let upstream = TcpStream::connect(api_server).await?;
    let name = ServerName::IpAddress(api_server.ip().into());
    let upstream = tokio::time::timeout(HANDSHAKE, connector.connect(name, upstream)).await??;
    let (sender, connection) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await?;
    tokio::spawn(connection);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (sender, failing, refused) = (sender.clone(), failing.clone(), refused.clone());
        async move {
            if failing.load(Ordering::SeqCst) && failing_paths.contains(&request.uri().path()) {
                refused.fetch_add(1, Ordering::SeqCst);
                return Ok::<_, hyper::Error>(unavailable());
            }
            let response = sender.lock().await.send_request(request).await?;
            Ok(response.map(|body| body.boxed()))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(downstream), service)
        .await?;
    Ok(())
}

/// What an API server answers when it cannot serve a request: a `Status` object.
fn unavailable() -> Response<Body> {
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "the test proxy fails this path", "reason": "ServiceUnavailable", "code": 503,
    });
    let mut response = Response::new(
        Full::new(Bytes::from(status.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("valid"));
    response
}
