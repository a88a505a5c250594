//! Kubeconfig files: one cluster, one user, one context. Written as indented JSON, which is
//! YAML too (kubectl, the kubelet and client-go read it as such), so no YAML library is
//! needed in the static init.

use base64::Engine;
use serde::{Deserialize, Serialize};

use keel_contract::secrets::CertKey;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub server: String,
    /// Base64 of the CA certificate's PEM, as kubeadm writes it.
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

/// A client certificate and key (base64 of their PEM), or a bearer token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(
        rename = "client-certificate-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    #[serde(
        rename = "client-key-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("client_certificate_data", &self.client_certificate_data)
            .field(
                "client_key_data",
                &self.client_key_data.as_ref().map(|_| "<elided>"),
            )
            .field("token", &self.token.as_ref().map(|_| "<elided>"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

impl Kubeconfig {
    fn new(cluster: &str, server: &str, ca_pem: &str, user_name: &str, user: User) -> Self {
        let context = format!("{user_name}@{cluster}");
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![NamedCluster {
                name: cluster.into(),
                cluster: Cluster {
                    server: server.into(),
                    certificate_authority_data: b64(ca_pem),
                },
            }],
            users: vec![NamedUser {
                name: user_name.into(),
                user,
            }],
            contexts: vec![NamedContext {
                name: context.clone(),
                context: Context {
                    cluster: cluster.into(),
                    user: user_name.into(),
                },
            }],
            current_context: context,
        }
    }

    /// A kubeconfig that authenticates with a client certificate.
    pub fn with_client_cert(
        cluster: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        client: &CertKey,
    ) -> Self {
        Self::new(
            cluster,
            server,
            ca_pem,
            user_name,
            User {
                client_certificate_data: Some(b64(&client.cert)),
                client_key_data: Some(b64(&client.key)),
                token: None,
            },
        )
    }

    /// A kubeconfig that authenticates with a bearer token (the kubelet's bootstrap).
    pub fn with_token(
        cluster: &str,
        server: &str,
        ca_pem: &str,
        user_name: &str,
        token: &str,
    ) -> Self {
        Self::new(
            cluster,
            server,
            ca_pem,
            user_name,
            User {
                client_certificate_data: None,
                client_key_data: None,
                token: Some(token.into()),
            },
        )
    }

    /// The file's text (JSON, which is YAML), with a final newline.
    pub fn to_yaml(&self) -> String {
        // Serialising these plain structs of strings cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads a kubeconfig written by [`Kubeconfig::to_yaml`] (JSON only).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
