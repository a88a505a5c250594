//! The server's TLS configuration: TLS 1.3 with the ring provider, the node's certificate
//! chain, and client certificates required and verified against the cluster's keel CA.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::certificate::Serving;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {message}")]
    Pem { what: &'static str, message: String },
    #[error("{what}: no certificate in the PEM")]
    NoCertificate { what: &'static str },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider both ends use: ring, not aws-lc-rs (which needs cmake and makes the
/// static init larger).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM string, in order.
pub fn certs_from_pem(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what });
    }
    Ok(certs)
}

/// The private key in a PEM string (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what,
        message: e.to_string(),
    })
}

/// The server side of the node API's mutual TLS. Clones share the serving certificate:
/// [`ServerTls::serve`] on one changes what all serve.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) serving: Arc<Serving>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// `cert_chain_pem`: the node's serving certificate (for [`SERVER_NAME`]) and any
    /// intermediates; `key_pem`: its key; `client_ca_pem`: the CA(s) whose certificates are
    /// let in. A client without a certificate, or with one no such CA issued, fails the
    /// handshake.
    ///
    /// [`SERVER_NAME`]: keel_contract::api::SERVER_NAME
    pub fn from_pem(
        cert_chain_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> Result<Self, TlsError> {
        let chain = certs_from_pem("the node certificate", cert_chain_pem)?;
        let key = key_from_pem("the node key", key_pem)?;
        let mut roots = RootCertStore::empty();
        for ca in certs_from_pem("the client CA", client_ca_pem)? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Config(format!("the client CA: {e}")))?;
        }
        let provider = provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Config(format!("the node certificate and key: {e}")))?;
        let serving = Arc::new(Serving::new(Arc::new(certified)));
        // Required by default: `allow_unauthenticated` is never called.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(serving.clone());
        // No resumption: every connection presents and has its client certificate checked,
        // and PID 1 keeps no session cache (each `keel` run is a new client anyway).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(ServerTls {
            config: Arc::new(config),
            serving,
        })
    }
}
