//! The cluster secrets file (`keel secrets gen` writes it, `image.secrets` names it) and the
//! per-node subset the builder puts into a node's STATE partition as
//! [`crate::layout::state::SECRETS`].
//!
//! Both are versioned TOML holding PEM strings. This module is the format only (serde + toml,
//! so the init can read a node's secrets without certificate code); generating keys and
//! certificates and deriving a node's files from them is the `keel-pki` crate.
//!
//! The cluster file (`version = 1`):
//!
//! ```toml
//! version = 1
//! cluster_name = "keel"
//! created = 1700000000            # unix seconds; the CAs are valid from one hour before
//! [kubernetes_ca]                 # cert + key: signs the API server, kubelets, admins
//! [etcd_ca]                       # cert + key: etcd servers, peers and clients
//! [front_proxy_ca]                # cert + key: the aggregation layer's client
//! [service_account]               # public + private: signs service-account tokens
//! [bootstrap_token]               # id (6 of a-z 0-9) + secret (16 of a-z 0-9): kubelet TLS bootstrap; created (optional, unix seconds) when renewed
//! [admin]                         # cert + key: CN=keel-admin, O=system:masters (kubectl)
//! [etcd_admin]                    # cert + key: an etcd client (etcdctl from an operator's host)
//! [keel_ca]                       # cert + key: Keel's node API (mutual TLS)
//! [keel_admin]                    # cert + key: `keel node` as an admin (O=keel:admin; or none, before roles)
//! [keel_read_only]                # cert + key: `keel node --read-only` (O=keel:read-only); optional
//! [node_api]                      # cert + key: CN and DNS SAN `keel-node`, served by every node
//! ```
//!
//! Every `cert` is one PEM `CERTIFICATE`, every `key`/`private` one PKCS#8 `PRIVATE KEY` and
//! `public` one `PUBLIC KEY`. Unknown fields are errors, and every error names the field and
//! says what was expected.
//!
//! What a node gets ([`Secrets::for_role`], [`NodeSecrets`]):
//!
//! | field | control plane | worker |
//! |---|---|---|
//! | `kubernetes_ca.cert` | yes | yes |
//! | `kubernetes_ca.key` | yes | **never** |
//! | `etcd_ca`, `front_proxy_ca` (cert + key) | yes | **never** |
//! | `service_account` (public + private) | yes | **never** |
//! | `bootstrap_token` | yes (to create it in the cluster) | yes (to join) |
//! | `keel_ca.cert` | yes | yes |
//! | `keel_ca.key` | **never** | **never** |
//! | `node_api` (cert + key) | yes | yes |
//! | `admin`, `etcd_admin`, `keel_admin`, `keel_read_only` | **never** (operator credentials) | **never** |

use std::fmt;

use serde::Serialize;

use crate::profile::{ClusterName, Role};

/// The cluster secrets file's format version. Readers refuse any other.
pub const SECRETS_VERSION: i64 = 1;
/// The node secrets file's format version.
pub const NODE_SECRETS_VERSION: i64 = 1;
/// The name every node's API certificate carries and clients pin.
pub const NODE_API_NAME: &str = crate::api::SERVER_NAME;

const EXPECT_CERT: &str = "a PEM certificate (-----BEGIN CERTIFICATE-----)";
const EXPECT_KEY: &str = "a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)";
const EXPECT_PUBLIC: &str = "a PEM public key (-----BEGIN PUBLIC KEY-----)";
const EXPECT_TOKEN_ID: &str = "6 characters of a-z 0-9";
const EXPECT_TOKEN_SECRET: &str = "16 characters of a-z 0-9";
const EXPECT_CLUSTER_NAME: &str =
    "1-63 lower-case letters, digits or '-', starting and ending with a letter or digit";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("not valid TOML: {0}")]
    Syntax(String),
    /// A field is missing, has the wrong type or an invalid value, or is not allowed.
    #[error("`{field}`: {problem}: expected {expected}")]
    Field {
        field: String,
        problem: String,
        expected: String,
    },
    #[error("writing TOML: {0}")]
    Serialize(String),
}

fn field_error(
    field: impl Into<String>,
    problem: impl Into<String>,
    expected: impl Into<String>,
) -> SecretsError {
    SecretsError::Field {
        field: field.into(),
        problem: problem.into(),
        expected: expected.into(),
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CertKey {
    pub cert: String,
    pub key: String,
}

/// The service-account token signing key pair, both PEM (`sa.pub`, `sa.key`).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ServiceAccountKey {
    pub public: String,
    pub private: String,
}

/// A kubeadm-style bootstrap token: `id.secret`, what a kubelet presents to get its first
/// client certificate. The id is public (it names the token's Secret in `kube-system`); the
/// secret is not.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
    /// When the token was made (unix seconds), if not with the secrets (`created`):
    /// `keel secrets renew` makes a new token. Its time to live counts from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
}

impl BootstrapToken {
    /// The token as kubelets and `kubeadm join` take it: `id.secret`.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// When the token expires (unix seconds) after `ttl_hours` (0: never), given when the
    /// secrets holding it were made.
    pub fn expires(&self, secrets_created: u64, ttl_hours: u32) -> Option<u64> {
        (ttl_hours > 0).then(|| {
            self.created
                .unwrap_or(secrets_created)
                .saturating_add(u64::from(ttl_hours) * 3600)
        })
    }
}

// Debug never prints private keys or the token secret: these structs end up in error
// messages and logs.
impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey")
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &format_args!("<elided>"))
            .finish()
    }
}
impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("public", &self.public)
            .field("private", &format_args!("<elided>"))
            .finish()
    }
}
impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id)
            .field("secret", &format_args!("<elided>"))
            .field("created", &self.created)
            .finish()
    }
}

/// The cluster's secrets: every CA with its key, the operator's credentials and what nodes
/// share. Only the operator (and the builder, to cut [`NodeSecrets`] from it) ever reads this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Secrets {
    /// Written into kubeconfigs as the cluster's name.
    pub cluster_name: ClusterName,
    /// When the secrets were generated (unix seconds).
    pub created: u64,
    pub kubernetes_ca: CertKey,
    pub etcd_ca: CertKey,
    pub front_proxy_ca: CertKey,
    pub service_account: ServiceAccountKey,
    pub bootstrap_token: BootstrapToken,
    /// kubectl's client certificate (Kubernetes CA, CN=keel-admin, O=system:masters).
    pub admin: CertKey,
    /// etcdctl's client certificate (etcd CA).
    pub etcd_admin: CertKey,
    /// Keel's own node-management CA (mutual TLS between `keel node` and the nodes).
    pub keel_ca: CertKey,
    /// The `keel node` CLI's client certificate (keel CA): an admin, who may change the node
    /// (see [`crate::api::OperatorRole`]).
    pub keel_admin: CertKey,
    /// A read-only operator's client certificate (keel CA): status, version and logs only.
    /// Files from before roles have none (`keel secrets renew` adds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keel_read_only: Option<CertKey>,
    /// The serving certificate every node presents (keel CA, CN and DNS SAN `keel-node`).
    pub node_api: CertKey,
}

/// The CA a node trusts: its certificate, and its key only where the role signs with it.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct CaCert {
    pub cert: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert")
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &self.key.as_ref().map(|_| "<elided>"))
            .finish()
    }
}

/// A CA certificate without its key (the keel CA, as every node holds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertOnly {
    pub cert: String,
}

/// What one node gets: `/secrets.toml` in its STATE partition. The fields a role gets are in
/// the module documentation; [`NodeSecrets::from_toml`] refuses a worker file that holds any
/// CA key and a control-plane file that lacks one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSecrets {
    pub role: Role,
    pub cluster_name: ClusterName,
    pub created: u64,
    /// Both roles: the certificate. Control plane: the key too.
    pub kubernetes_ca: CaCert,
    /// Control plane only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca: Option<CertKey>,
    /// Control plane only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub front_proxy_ca: Option<CertKey>,
    /// Control plane only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountKey>,
    pub bootstrap_token: BootstrapToken,
    /// The certificate only: nodes verify `keel node` clients with it, never sign.
    pub keel_ca: CertOnly,
    pub node_api: CertKey,
}

impl Secrets {
    /// Parses and checks a cluster secrets file.
    pub fn from_toml(text: &str) -> Result<Secrets, SecretsError> {
        let root = parse_table(text)?;
        let t = Fields::root(&root);
        t.deny_unknown(&[
            "version",
            "cluster_name",
            "created",
            "kubernetes_ca",
            "etcd_ca",
            "front_proxy_ca",
            "service_account",
            "bootstrap_token",
            "admin",
            "etcd_admin",
            "keel_ca",
            "keel_admin",
            "keel_read_only",
            "node_api",
        ])?;
        t.version(SECRETS_VERSION)?;
        Ok(Secrets {
            cluster_name: t.cluster_name()?,
            created: t.created()?,
            kubernetes_ca: t
                .table("kubernetes_ca", "a table with cert and key")?
                .cert_key()?,
            etcd_ca: t
                .table("etcd_ca", "a table with cert and key")?
                .cert_key()?,
            front_proxy_ca: t
                .table("front_proxy_ca", "a table with cert and key")?
                .cert_key()?,
            service_account: t
                .table("service_account", "a table with public and private")?
                .service_account()?,
            bootstrap_token: t
                .table("bootstrap_token", "a table with id and secret")?
                .bootstrap_token()?,
            admin: t.table("admin", "a table with cert and key")?.cert_key()?,
            etcd_admin: t
                .table("etcd_admin", "a table with cert and key")?
                .cert_key()?,
            keel_ca: t
                .table("keel_ca", "a table with cert and key")?
                .cert_key()?,
            keel_admin: t
                .table("keel_admin", "a table with cert and key")?
                .cert_key()?,
            keel_read_only: t
                .optional_table("keel_read_only", "a table with cert and key")?
                .map(|f| f.cert_key())
                .transpose()?,
            node_api: t
                .table("node_api", "a table with cert and key")?
                .cert_key()?,
        })
    }

    /// The file's text: `version = 1` first, then the fields in declaration order.
    pub fn to_toml(&self) -> Result<String, SecretsError> {
        #[derive(Serialize)]
        struct File<'a> {
            version: i64,
            #[serde(flatten)]
            secrets: &'a Secrets,
        }
        toml::to_string(&File {
            version: SECRETS_VERSION,
            secrets: self,
        })
        .map_err(|e| SecretsError::Serialize(e.to_string()))
    }

    /// What a node of `role` gets. A worker never gets a CA key; no node gets the keel CA's
    /// key or an operator credential.
    pub fn for_role(&self, role: Role) -> NodeSecrets {
        let control_plane = role == Role::ControlPlane;
        NodeSecrets {
            role,
            cluster_name: self.cluster_name.clone(),
            created: self.created,
            kubernetes_ca: CaCert {
                cert: self.kubernetes_ca.cert.clone(),
                key: control_plane.then(|| self.kubernetes_ca.key.clone()),
            },
            etcd_ca: control_plane.then(|| self.etcd_ca.clone()),
            front_proxy_ca: control_plane.then(|| self.front_proxy_ca.clone()),
            service_account: control_plane.then(|| self.service_account.clone()),
            bootstrap_token: self.bootstrap_token.clone(),
            keel_ca: CertOnly {
                cert: self.keel_ca.cert.clone(),
            },
            node_api: self.node_api.clone(),
        }
    }
}

impl NodeSecrets {
    /// Parses a node secrets file and checks that it holds exactly what its role gets.
    pub fn from_toml(text: &str) -> Result<NodeSecrets, SecretsError> {
        let root = parse_table(text)?;
        let t = Fields::root(&root);
        t.deny_unknown(&[
            "version",
            "role",
            "cluster_name",
            "created",
            "kubernetes_ca",
            "etcd_ca",
            "front_proxy_ca",
            "service_account",
            "bootstrap_token",
            "keel_ca",
            "node_api",
        ])?;
        t.version(NODE_SECRETS_VERSION)?;
        let role = match t.string("role", "\"controlplane\" or \"worker\"")? {
            "controlplane" => Role::ControlPlane,
            "worker" => Role::Worker,
            other => {
                return Err(field_error(
                    "role",
                    format!("{other:?} is not a role"),
                    "\"controlplane\" or \"worker\"",
                ));
            }
        };
        let control_plane = role == Role::ControlPlane;
        // A control plane must have every CA key it signs with; a worker must have none.
        let ca_table = |key: &str, expected: &str| -> Result<Option<Fields<'_>>, SecretsError> {
            let table = t.optional_table(key, expected)?;
            match (control_plane, table) {
                (true, None) => Err(field_error(
                    key,
                    "missing",
                    format!("{expected} on a control plane"),
                )),
                (false, Some(_)) => Err(field_error(
                    key,
                    "present in a worker's secrets",
                    "no CA key and no service-account key on a worker",
                )),
                (_, table) => Ok(table),
            }
        };
        let etcd_ca = ca_table("etcd_ca", "a table with cert and key")?
            .map(|f| f.cert_key())
            .transpose()?;
        let front_proxy_ca = ca_table("front_proxy_ca", "a table with cert and key")?
            .map(|f| f.cert_key())
            .transpose()?;
        let service_account = ca_table("service_account", "a table with public and private")?
            .map(|f| f.service_account())
            .transpose()?;

        let k8s = t.table(
            "kubernetes_ca",
            "a table with cert (and key on a control plane)",
        )?;
        k8s.deny_unknown(&["cert", "key"])?;
        let key = match (control_plane, k8s.has("key")) {
            (true, _) => Some(k8s.pem("key", "PRIVATE KEY", EXPECT_KEY)?),
            (false, false) => None,
            (false, true) => {
                return Err(field_error(
                    "kubernetes_ca.key",
                    "present in a worker's secrets",
                    "only the certificate on a worker",
                ));
            }
        };
        let kubernetes_ca = CaCert {
            cert: k8s.pem("cert", "CERTIFICATE", EXPECT_CERT)?,
            key,
        };
        let keel = t.table("keel_ca", "a table with cert")?;
        keel.deny_unknown(&["cert"])?;
        Ok(NodeSecrets {
            role,
            cluster_name: t.cluster_name()?,
            created: t.created()?,
            kubernetes_ca,
            etcd_ca,
            front_proxy_ca,
            service_account,
            bootstrap_token: t
                .table("bootstrap_token", "a table with id and secret")?
                .bootstrap_token()?,
            keel_ca: CertOnly {
                cert: keel.pem("cert", "CERTIFICATE", EXPECT_CERT)?,
            },
            node_api: t
                .table("node_api", "a table with cert and key")?
                .cert_key()?,
        })
    }

    /// The file's text: `version = 1` first.
    pub fn to_toml(&self) -> Result<String, SecretsError> {
        #[derive(Serialize)]
        struct File<'a> {
            version: i64,
            #[serde(flatten)]
            secrets: &'a NodeSecrets,
        }
        toml::to_string(&File {
            version: NODE_SECRETS_VERSION,
            secrets: self,
        })
        .map_err(|e| SecretsError::Serialize(e.to_string()))
    }
}

/// The characters of a bootstrap token (kubeadm's `[a-z0-9]`).
pub fn token_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

mod fields;
mod pem;

use fields::{Fields, parse_table};
use pem::check_pem;
pub use pem::{PemBlock, pem_blocks};

#[cfg(test)]
mod tests;
