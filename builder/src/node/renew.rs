//! `keel node renew-certificate`: a renewed API serving certificate, from a secrets file to
//! the node (`POST /v1/certificate`), which checks it, keeps it and serves it.

use std::path::Path;

use keel_contract::api::{CertificateReport, NodeCertificate, Request};
use keel_contract::secrets::{NodeSecrets, Secrets};

use super::{NodeClient, NodeError, Reply, Upload};

/// The `node_api` certificate and key of a cluster secrets file (the shared one) or of a
/// node secrets file (`keel secrets node`: the node's own).
pub fn node_certificate_from(path: &Path) -> Result<NodeCertificate, NodeError> {
    let bad = |e: String| NodeError::BadInput(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    // A node file says its role; a cluster file has the CA keys instead.
    let node_api = if table.contains_key("role") {
        NodeSecrets::from_toml(&text)
            .map_err(|e| bad(format!("as a node secrets file: {e}")))?
            .node_api
    } else {
        Secrets::from_toml(&text)
            .map_err(|e| bad(format!("as a cluster secrets file: {e}")))?
            .node_api
    };
    Ok(NodeCertificate {
        cert: node_api.cert,
        key: node_api.key,
    })
}

impl NodeClient {
    /// Sends `offered` to the node; its answer says what it serves now.
    pub fn renew_certificate(
        &self,
        offered: &NodeCertificate,
    ) -> Result<CertificateReport, NodeError> {
        let reply = self.renew_certificate_raw(offered)?;
        self.parse(&reply, "certificate renewal")
    }

    /// As [`renew_certificate`](Self::renew_certificate), the node's answer unparsed.
    pub fn renew_certificate_raw(&self, offered: &NodeCertificate) -> Result<Reply, NodeError> {
        let body = serde_json::to_vec(offered)
            .map_err(|e| NodeError::BadInput(format!("the certificate: {e}")))?;
        self.request(
            &Request::RenewCertificate,
            Some(Upload {
                body: &mut body.as_slice(),
                len: body.len() as u64,
                progress: &|_| {},
            }),
        )
    }
}
