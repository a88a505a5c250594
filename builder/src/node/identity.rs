//! `keel node --node NAME`: which node's certificate the client accepts. The chain is checked
//! against the keel CA for the shared name `keel-node` (every node certificate carries it),
//! then the certificate must name NAME, and when it lists addresses, the one dialled. The
//! shared certificate (only `keel-node`, which every node holds) is accepted too unless
//! `--own-certificate-only` says otherwise: that is how a cluster moves off it.

use std::net::IpAddr;
use std::sync::Arc;

use keel_contract::secrets::NODE_API_NAME;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// Who the node must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's name, as `keel secrets node NAME` issued its certificate.
    pub name: String,
    /// The address dialled, when the endpoint is one (a host name is not checked here: the
    /// certificate's name is).
    pub address: Option<IpAddr>,
    /// Refuse the shared `keel-node` certificate.
    pub own_certificate_only: bool,
}

impl NodeIdentity {
    /// Whether a certificate with these names is this node's; `Err` says why not.
    pub fn check(&self, names: &keel_pki::CertNames) -> Result<(), String> {
        let wanted = self.name.to_ascii_lowercase();
        if names.dns.contains(&wanted) {
            return match self.address {
                Some(ip) if !names.ips.is_empty() && !names.ips.contains(&ip) => Err(format!(
                    "the node's certificate is for {} at {}, not at {ip}",
                    self.name,
                    list(&names.ips)
                )),
                _ => Ok(()),
            };
        }
        let shared = names.dns == [NODE_API_NAME] && names.ips.is_empty();
        if shared && !self.own_certificate_only {
            return Ok(());
        }
        if shared {
            return Err(format!(
                "the node presented the shared {NODE_API_NAME} certificate, not one of its own for {} (--own-certificate-only)",
                self.name
            ));
        }
        Err(format!(
            "the node's certificate is not for {}: it names {}",
            self.name,
            list(&names.dns)
        ))
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug)]
pub(crate) struct NodeVerifier {
    inner: Arc<WebPkiServerVerifier>,
    node: NodeIdentity,
}

impl NodeVerifier {
    pub(crate) fn new(roots: RootCertStore, node: NodeIdentity) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(NodeVerifier { inner, node })
    }
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The keel CA, the validity and `keel-node`, as without --node.
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let names = keel_pki::cert_names(end_entity.as_ref())
            .map_err(|e| Error::General(format!("the node's certificate: {e}")))?;
        self.node
            .check(&names)
            .map_err(Error::General)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
