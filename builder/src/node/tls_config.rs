//! The rustls client configuration `keel node` talks with: built from the operator's
//! credentials, apart from the client because it is the one place that decides what the
//! client trusts (the keel CA only, or one node's certificate) and what it presents.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::{ClientCredentials, NodeError, NodeIdentity, identity};

fn certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, NodeError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NodeError::BadInput(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(NodeError::BadInput(format!(
            "{what}: no certificate in the PEM"
        )));
    }
    Ok(certs)
}

/// The TLS client configuration: TLS 1.3, ring, the keel CA as the only root, the admin
/// certificate presented.
pub fn client_config(creds: &ClientCredentials) -> Result<Arc<ClientConfig>, NodeError> {
    client_config_for(creds, None)
}

/// As [`client_config`], and with `node`, the node's certificate must be that node's (see
/// [`NodeIdentity`]).
pub fn client_config_for(
    creds: &ClientCredentials,
    node: Option<NodeIdentity>,
) -> Result<Arc<ClientConfig>, NodeError> {
    let mut roots = RootCertStore::empty();
    for ca in certs("the keel CA certificate", &creds.ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| NodeError::BadInput(format!("the keel CA certificate: {e}")))?;
    }
    let chain = certs("the admin certificate", &creds.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes())
        .map_err(|e| NodeError::BadInput(format!("the admin key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NodeError::BadInput(format!("TLS: {e}")))?;
    let builder = match node {
        None => builder.with_root_certificates(roots),
        Some(node) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                identity::NodeVerifier::new(roots, node)
                    .map_err(|e| NodeError::BadInput(format!("the keel CA certificate: {e}")))?,
            )),
    };
    let config = builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| NodeError::BadInput(format!("the admin certificate and key: {e}")))?;
    Ok(Arc::new(config))
}
