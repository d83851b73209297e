//! TLS for the frontend tests: a test CA that signs certificates for host names, and a
//! client that says which certificate a server presented for an SNI name, with the
//! answer to one HTTP/1.1 request over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A CA made for one test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: CertificateDer<'static>,
}

/// A certificate the CA signed: its PEMs, and its DER to recognise it when served.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dockscale test CA");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `names`, with a fresh key.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that trusts this CA only.
    pub fn client(&self) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA into the root store");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every connection a full handshake: a resumed session would report the
        // certificate of the session it resumes, not the one served now.
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// One HTTPS request's outcome: the status, and the certificate the server presented.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub presented: CertificateDer<'static>,
}

#[derive(Clone)]
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

impl TlsClient {
    /// `GET path` to `addr` over a new TLS connection with SNI `host` (and `Host:
    /// host`), within 5 s.
    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
        tokio::time::timeout(Duration::from_secs(5), self.get_inner(addr, host, path))
            .await
            .map_err(|_| format!("no answer from {addr} ({host}) within 5 s"))?
    }

    async fn get_inner(&self, addr: SocketAddr, host: &str, path: &str) -> Result<Answer, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("name: {e}"))?;
        let mut tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let presented = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no certificate presented")?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = Vec::new();
        // HAProxy closes after the answer; a close without close_notify still leaves
        // the whole answer read.
        if let Err(e) = tls.read_to_end(&mut reply).await {
            if reply.is_empty() {
                return Err(format!("read: {e}"));
            }
        }
        let text = String::from_utf8_lossy(&reply).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok(Answer {
            status,
            body,
            presented,
        })
    }
}

/// Writes a file through a temporary one renamed over it, as certificate tools do.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("swap-tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
