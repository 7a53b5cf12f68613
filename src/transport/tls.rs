//! TLS with rustls (aws-lc-rs provider, installed explicitly at start-up). Certificates are
//! served through a resolver whose key can be swapped at run time ([`ReloadingCert::reload`],
//! on SIGHUP), so certificate rotation needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsInfo;

/// Installs aws-lc-rs as the process-wide crypto provider. Explicit, so feature unification in
/// dependencies can never leave two providers and an ambiguous default.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Whether client certificates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Never.
    None,
    /// Asked for and verified if sent; clients without one are admitted.
    Optional,
    /// Required: the handshake fails without a valid client certificate.
    Required,
}

/// TLS settings of a listener (paths already resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// Lowest protocol version: TLS 1.2 or 1.3.
    pub min_tls_13: bool,
    /// CA bundle that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// ALPN protocols offered (`mqtt` for MQTT over TLS, `http/1.1` for WSS).
    pub alpn: Vec<Vec<u8>>,
}

/// The serving certificate, swappable at run time.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Loads the certificate and key now.
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCert, String> {
        let ck = load_certified_key(cert, key)?;
        Ok(ReloadingCert { cert: cert.into(), key: key.into(), current: RwLock::new(Arc::new(ck)) })
    }

    /// Re-reads the files; on error the current certificate stays and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load_certified_key(&self.cert, &self.key)?;
        // Invariant: no code panics while holding this lock.
        *self.current.write().expect("certificate lock") = Arc::new(ck);
        Ok(())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok(ck)
}

/// Builds the rustls server configuration of a listener.
pub fn server_config(s: &TlsSettings) -> Result<(Arc<ServerConfig>, Arc<ReloadingCert>), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if s.min_tls_13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (&s.client_ca, s.client_auth) {
        (None, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => return Err("client_auth needs client_ca".into()),
        (Some(ca), auth) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder(Arc::new(roots));
            let v = if auth == ClientAuth::Required { v } else { v.allow_unauthenticated() };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("{}: {e}", ca.display()))?)
        }
    };
    let cert = Arc::new(ReloadingCert::load(&s.cert, &s.key)?);
    let mut cfg = builder.with_cert_resolver(cert.clone());
    cfg.alpn_protocols = s.alpn.clone();
    Ok((Arc::new(cfg), cert))
}

/// What a finished handshake negotiated.
pub fn info(conn: &ServerConnection) -> TlsInfo {
    let client_cn = conn.peer_certificates().and_then(|c| c.first()).and_then(|der| common_name(der));
    TlsInfo {
        version: conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
        cipher: conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default(),
        sni: conn.server_name().map(str::to_owned),
        alpn: conn.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
        client_cn,
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
