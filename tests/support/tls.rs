//! TLS for test servers: a throwaway certificate authority made at test time, server certificates it
//! signs, and a helper that serves an axum `Router` over TLS.
//!
//! Emulators of Azure services need HTTPS because the Azure SDK refuses to send a bearer token over plain
//! HTTP. Nothing here weakens a client: the CA's PEM is written to a temporary file that a test hands to
//! itsmc exactly as an operator would hand a corporate CA through `ITSMC_CA_FILE`
//! ([`TestCa::http_settings`]), and the client then verifies the emulator's certificate like any other.
//!
//! Part of `tests/support` (`mod support;`), beside the Key Vault emulator that uses it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::serve::Server;

/// A certificate authority that exists only for the life of a test.
pub struct TestCa {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// Holds the PEM for `ITSMC_CA_FILE`; deleted when the CA is dropped.
    ca_file: tempfile::NamedTempFile,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA with a fresh key. Panics only if the host cannot generate keys or write a temporary file,
    /// which no test could recover from.
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "itsmc test CA");
        params.distinguished_name.push(DnType::OrganizationName, "itsmc tests");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let certificate = params.self_signed(&key).expect("self-signed CA certificate");
        let ca_pem = certificate.pem();
        let ca_der = certificate.der().clone();
        let mut ca_file = tempfile::Builder::new().prefix("itsmc-test-ca-").suffix(".pem").tempfile().expect("CA file");
        std::io::Write::write_all(&mut ca_file, ca_pem.as_bytes()).expect("write CA file");
        TestCa { ca_pem, ca_der, ca_file, issuer: Issuer::new(params, key) }
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The file holding [`Self::ca_pem`], for `ITSMC_CA_FILE`.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.path()
    }

    /// itsmc's HTTP settings with `ITSMC_CA_FILE` pointing at this CA, for [`itsmc::http::build_client`].
    pub fn http_settings(&self) -> itsmc::http::HttpSettings {
        itsmc::http::HttpSettings {
            ca_file: Some(self.ca_file().to_string_lossy().into_owned()),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// A rustls server configuration whose certificate is valid for `127.0.0.1`, `localhost` and
    /// `extra_names`, signed by this CA. The chain sent includes the CA, as real servers send
    /// intermediates. ALPN offers HTTP/2 and HTTP/1.1, like Azure front ends.
    pub fn server_config(&self, extra_names: &[&str]) -> Arc<rustls::ServerConfig> {
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().map(|name| name.to_string()));
        let mut params = CertificateParams::new(names).expect("server certificate parameters");
        params.distinguished_name.push(DnType::CommonName, extra_names.first().copied().unwrap_or("localhost"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().expect("server key");
        let certificate = params.signed_by(&key, &self.issuer).expect("server certificate");
        let chain = vec![certificate.der().clone(), self.ca_der.clone()];
        let private_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .expect("server TLS configuration");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A client that trusts this CA (and the platform's roots) and resolves `host` to `addr`, so a URL
    /// such as `https://itsmc-emulator.vault.azure.net:PORT/` reaches an emulator on loopback while the
    /// client still checks the certificate against that host name. Only tests build clients this way:
    /// itsmc's own builder ([`itsmc::http::build_client`]) has no resolver override. Its other settings
    /// (no redirects, timeouts) are mirrored here.
    pub fn client_resolving(&self, host: &str, addr: SocketAddr) -> reqwest::Client {
        let certificates = reqwest::Certificate::from_pem_bundle(self.ca_pem.as_bytes()).expect("CA PEM");
        reqwest::Client::builder()
            .tls_certs_merge(certificates)
            // reqwest ignores the port here; the URL carries it.
            .resolve(host, SocketAddr::new(addr.ip(), 0))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("test HTTP client")
    }
}

/// An HTTPS server running an axum `Router` on its own thread and runtime, so it serves whatever runtime
/// (or none) the test uses. Dropping it stops the server and closes its connections.
pub struct TlsServer {
    addr: SocketAddr,
    _server: Server,
}

impl TlsServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Serve `app` over TLS on an already bound listener (bind first when the address must be known before
/// anything else starts).
pub fn serve(listener: std::net::TcpListener, config: Arc<rustls::ServerConfig>, app: Router) -> TlsServer {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let addr = listener.local_addr().expect("listener address");
    let server = Server::spawn(&format!("tls-server-{}", addr.port()), move |stopped| {
        accept_loop(listener, config, app, stopped)
    });
    TlsServer { addr, _server: server }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let acceptor = TlsAcceptor::from(config);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    // Typically EMFILE; back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    // A client that rejects our certificate aborts the handshake; nothing to serve then.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |request| {
                        let mut app = app.clone();
                        async move { tower::Service::call(&mut app, request).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    }
}
