//! A minimal Kubernetes API client for what the init itself must create in its cluster
//! (see `roles::cluster_bootstrap`): HTTPS with the client certificate of a kubeconfig
//! written by the PKI code, the cluster CA as the only root, one request per connection.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use keel_contract::profile::Endpoint;
use keel_pki::kubeconfig::Kubeconfig;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::api::tls;
use crate::roles::cluster_bootstrap::ApiObject;

/// Response bodies larger than this are refused (the init only reads status codes and
/// messages).
const MAX_RESPONSE: u64 = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    #[error("{endpoint}: malformed HTTP response: {message}")]
    Malformed { endpoint: String, message: String },
}

/// What creating an object came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyThere,
}

pub struct KubeClient {
    endpoint: Endpoint,
    config: Arc<ClientConfig>,
}

fn decode(field: &str, data: Option<&str>) -> Result<String, KubeError> {
    let data = data.ok_or_else(|| KubeError::Kubeconfig(format!("no {field}")))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| KubeError::Kubeconfig(format!("{field}: {e}")))?;
    String::from_utf8(bytes).map_err(|_| KubeError::Kubeconfig(format!("{field}: not PEM text")))
}

impl KubeClient {
    /// From a kubeconfig with a client certificate (JSON, as the PKI code writes them).
    pub fn from_kubeconfig(text: &str) -> Result<Self, KubeError> {
        let bad = |m: String| KubeError::Kubeconfig(m);
        let conf = Kubeconfig::from_json(text).map_err(|e| bad(e.to_string()))?;
        let cluster = &conf
            .clusters
            .first()
            .ok_or_else(|| bad("no cluster".into()))?
            .cluster;
        let user = &conf
            .users
            .first()
            .ok_or_else(|| bad("no user".into()))?
            .user;
        let endpoint: Endpoint = cluster.server.parse().map_err(bad)?;
        let ca = decode(
            "certificate-authority-data",
            Some(&cluster.certificate_authority_data),
        )?;
        let cert = decode(
            "client-certificate-data",
            user.client_certificate_data.as_deref(),
        )?;
        let key = decode("client-key-data", user.client_key_data.as_deref())?;
        let tls_err = |e: tls::TlsError| bad(e.to_string());
        let mut roots = RootCertStore::empty();
        for c in tls::certs_from_pem("the cluster CA", &ca).map_err(tls_err)? {
            roots
                .add(c)
                .map_err(|e| bad(format!("the cluster CA: {e}")))?;
        }
        let chain = tls::certs_from_pem("the client certificate", &cert).map_err(tls_err)?;
        let key = tls::key_from_pem("the client key", &key).map_err(tls_err)?;
        let config = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad(format!("the client certificate and key: {e}")))?;
        Ok(KubeClient {
            endpoint,
            config: Arc::new(config),
        })
    }

    pub fn endpoint(&self) -> String {
        self.endpoint.to_string()
    }

    /// One request; returns the status code and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), KubeError> {
        let endpoint = self.endpoint();
        let fail = |message: String| KubeError::Connect {
            endpoint: endpoint.clone(),
            message,
        };
        let host = &self.endpoint.host;
        let addr = (host.as_str(), self.endpoint.port)
            .to_socket_addrs()
            .map_err(|e| fail(e.to_string()))?
            .next()
            .ok_or_else(|| fail(format!("no address for {host}")))?;
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| fail(e.to_string()))?;
        tcp.set_read_timeout(Some(TIMEOUT))
            .and_then(|_| tcp.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| fail(e.to_string()))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string()))?;
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| fail(format!("TLS: {e}")))?;
        let mut stream = StreamOwned::new(conn, tcp);
        let body = body.unwrap_or("");
        let authority = if host.contains(':') {
            format!("[{host}]:{}", self.endpoint.port)
        } else {
            format!("{host}:{}", self.endpoint.port)
        };
        let length = body.len().to_string();
        let mut request = keel_http::request_head(
            method,
            path,
            &[
                ("Host", &authority),
                ("User-Agent", "keel-init"),
                ("Accept", "application/json"),
                ("Content-Type", "application/json"),
                ("Content-Length", &length),
                ("Connection", "close"),
            ],
        )
        .map_err(|e| fail(e.to_string()))?;
        request.extend_from_slice(body.as_bytes());
        stream
            .write_all(&request)
            .and_then(|_| stream.flush())
            .map_err(|e| fail(e.to_string()))?;
        read_response(&mut stream).map_err(|e| match e {
            ResponseError::Io(e) => fail(e.to_string()),
            ResponseError::Malformed(message) => KubeError::Malformed {
                endpoint: self.endpoint(),
                message,
            },
        })
    }

    /// `GET /readyz`: the API server answers and is ready.
    pub fn ready(&self) -> Result<bool, KubeError> {
        Ok(self.request("GET", "/readyz", None)?.0 == 200)
    }

    /// Creates `object`; an object of that name already there is fine (its content is left
    /// as it is, as `kubectl create` would).
    pub fn create(&self, object: &ApiObject) -> Result<Created, String> {
        let (status, body) = self
            .request("POST", object.collection, Some(&object.body))
            .map_err(|e| e.to_string())?;
        match status {
            200..=202 => Ok(Created::Created),
            409 => Ok(Created::AlreadyThere),
            _ => Err(format!(
                "creating {}: HTTP {status}: {}",
                object.describe,
                status_message(&body)
            )),
        }
    }
}

enum ResponseError {
    Io(std::io::Error),
    Malformed(String),
}

/// Status code and body of an HTTP/1.x response (de-chunked if need be), read to its end.
fn read_response(r: &mut dyn Read) -> Result<(u16, String), ResponseError> {
    let (head, early) = keel_http::read_response_head(r).map_err(|e| match e {
        keel_http::HeadError::Io(e) => ResponseError::Io(e),
        e => ResponseError::Malformed(e.to_string()),
    })?;
    let body = keel_http::read_body(&head, early, r, MAX_RESPONSE).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            ResponseError::Malformed(e.to_string())
        } else {
            ResponseError::Io(e)
        }
    })?;
    Ok((head.status, String::from_utf8_lossy(&body).into_owned()))
}

/// The `message` of a Kubernetes `Status` body, else the body itself (shortened).
fn status_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_response(mut raw: &[u8]) -> Option<(u16, String)> {
        read_response(&mut raw).ok()
    }

    #[test]
    fn responses_plain_and_chunked() {
        let plain =
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n{\"kind\":\"Secret\"}";
        assert_eq!(
            parse_response(plain),
            Some((201, "{\"kind\":\"Secret\"}".into()))
        );
        let chunked = b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mes\r\n1b\r\nsage\":\"already exists\"}    \r\n0\r\n\r\n";
        let (status, body) = parse_response(chunked).unwrap();
        assert_eq!(status, 409);
        assert_eq!(status_message(&body), "already exists");
        assert_eq!(parse_response(b"HTTP/1.1 200"), None);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            None
        );
        assert!(matches!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..]),
            Err(ResponseError::Malformed(_))
        ));
    }

    #[test]
    fn kubeconfigs_without_a_client_certificate_are_refused() {
        let conf = Kubeconfig::with_token(
            "keel",
            "https://10.0.0.1:6443",
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "tls-bootstrap-token-user",
            "abcdef.0123456789abcdef",
        );
        let err = KubeClient::from_kubeconfig(&conf.to_yaml())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("client-certificate-data"), "{err}");
        assert!(KubeClient::from_kubeconfig("{").is_err());
    }
}
