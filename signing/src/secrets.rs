//! The cluster secrets file (`keel secrets gen` writes it, `image.secrets` names it) and the
//! per-node subset the builder puts into a node's STATE partition as [`STATE_SECRETS_FILE`].
//!
//! Both are versioned TOML holding PEM strings. This module is the format only (serde + toml,
//! always compiled, so the init can read a node's secrets without the `pki` feature);
//! generating keys and certificates and deriving a node's files from them is
//! [`crate::pki`].
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
//! [bootstrap_token]               # id (6 of a-z 0-9) + secret (16 of a-z 0-9): kubelet TLS bootstrap
//! [admin]                         # cert + key: CN=keel-admin, O=system:masters (kubectl)
//! [etcd_admin]                    # cert + key: an etcd client (etcdctl from an operator's host)
//! [keel_ca]                       # cert + key: Keel's node API (mutual TLS)
//! [keel_admin]                    # cert + key: the `keel node` CLI's client certificate
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
//! | `admin`, `etcd_admin`, `keel_admin` | **never** (operator credentials) | **never** |

use std::fmt;

use base64::Engine;
use serde::Serialize;

use crate::profile::Role;

/// The cluster secrets file's format version. Readers refuse any other.
pub const SECRETS_VERSION: i64 = 1;
/// The node secrets file's format version.
pub const NODE_SECRETS_VERSION: i64 = 1;
/// Where a node's secrets live in its STATE partition.
pub const STATE_SECRETS_FILE: &str = "/secrets.toml";
/// The name every node's API certificate carries and clients pin.
pub const NODE_API_NAME: &str = "keel-node";

const EXPECT_CERT: &str = "a PEM certificate (-----BEGIN CERTIFICATE-----)";
const EXPECT_KEY: &str = "a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)";
const EXPECT_PUBLIC: &str = "a PEM public key (-----BEGIN PUBLIC KEY-----)";
const EXPECT_TOKEN_ID: &str = "6 characters of a-z 0-9";
const EXPECT_TOKEN_SECRET: &str = "16 characters of a-z 0-9";
const EXPECT_CLUSTER_NAME: &str = "1-63 lower-case letters, digits or '-'";

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
}

impl BootstrapToken {
    /// The token as kubelets and `kubeadm join` take it: `id.secret`.
    pub fn token(&self) -> String {
        format!("{}.{}", self.id, self.secret)
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
            .finish()
    }
}

/// The cluster's secrets: every CA with its key, the operator's credentials and what nodes
/// share. Only the operator (and the builder, to cut [`NodeSecrets`] from it) ever reads this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Secrets {
    /// Written into kubeconfigs as the cluster's name.
    pub cluster_name: String,
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
    /// The `keel node` CLI's client certificate (keel CA).
    pub keel_admin: CertKey,
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
    pub cluster_name: String,
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

fn parse_table(text: &str) -> Result<toml::Table, SecretsError> {
    toml::from_str(text).map_err(|e| SecretsError::Syntax(e.to_string().trim_end().to_owned()))
}

fn describe(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// A table being read, with its dotted path for error messages. Parsing by hand (rather
/// than with derived `Deserialize`) is what lets every error name the full field.
#[derive(Clone, Copy)]
struct Fields<'a> {
    table: &'a toml::Table,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn root(table: &'a toml::Table) -> Self {
        Fields { table, path: "" }
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn deny_unknown(&self, known: &[&str]) -> Result<(), SecretsError> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(field_error(
                self.name(k),
                "unknown field",
                format!("one of {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    fn value(&self, key: &str, expected: &str) -> Result<&'a toml::Value, SecretsError> {
        self.table
            .get(key)
            .ok_or_else(|| field_error(self.name(key), "missing", expected))
    }

    fn string(&self, key: &str, expected: &str) -> Result<&'a str, SecretsError> {
        match self.value(key, expected)? {
            toml::Value::String(s) => Ok(s),
            other => Err(field_error(
                self.name(key),
                format!("is {}", describe(other)),
                expected,
            )),
        }
    }

    fn integer(&self, key: &str, expected: &str) -> Result<i64, SecretsError> {
        match self.value(key, expected)? {
            toml::Value::Integer(n) => Ok(*n),
            other => Err(field_error(
                self.name(key),
                format!("is {}", describe(other)),
                expected,
            )),
        }
    }

    /// The sub-table `key`, required.
    fn table(&self, key: &str, expected: &str) -> Result<Fields<'a>, SecretsError> {
        self.optional_table(key, expected)?
            .ok_or_else(|| field_error(self.name(key), "missing", expected))
    }

    fn optional_table(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<Fields<'a>>, SecretsError> {
        // Only top-level tables are nested here, so the sub-table's path is its key, which
        // the parsed map owns for as long as the reader lives.
        match self.table.get_key_value(key) {
            None => Ok(None),
            Some((k, toml::Value::Table(t))) => Ok(Some(Fields {
                table: t,
                path: k.as_str(),
            })),
            Some((_, other)) => Err(field_error(
                self.name(key),
                format!("is {}", describe(other)),
                expected,
            )),
        }
    }

    fn version(&self, supported: i64) -> Result<(), SecretsError> {
        let expected = format!("{supported}");
        let v = self.integer("version", &format!("version = {supported}"))?;
        if v == supported {
            Ok(())
        } else {
            Err(field_error(
                "version",
                format!("{v} is not supported by this Keel"),
                expected,
            ))
        }
    }

    fn cluster_name(&self) -> Result<String, SecretsError> {
        let name = self.string("cluster_name", EXPECT_CLUSTER_NAME)?;
        if valid_cluster_name(name) {
            Ok(name.to_owned())
        } else {
            Err(field_error(
                "cluster_name",
                format!("{name:?} is not a cluster name"),
                EXPECT_CLUSTER_NAME,
            ))
        }
    }

    fn created(&self) -> Result<u64, SecretsError> {
        let expected = "unix seconds (a non-negative integer)";
        let n = self.integer("created", expected)?;
        u64::try_from(n).map_err(|_| field_error("created", format!("{n} is negative"), expected))
    }

    fn pem(&self, key: &str, label: &str, expected: &str) -> Result<String, SecretsError> {
        let text = self.string(key, expected)?;
        check_pem(text, label).map_err(|problem| field_error(self.name(key), problem, expected))?;
        Ok(text.to_owned())
    }

    fn cert_key(&self) -> Result<CertKey, SecretsError> {
        self.deny_unknown(&["cert", "key"])?;
        Ok(CertKey {
            cert: self.pem("cert", "CERTIFICATE", EXPECT_CERT)?,
            key: self.pem("key", "PRIVATE KEY", EXPECT_KEY)?,
        })
    }

    fn service_account(&self) -> Result<ServiceAccountKey, SecretsError> {
        self.deny_unknown(&["public", "private"])?;
        Ok(ServiceAccountKey {
            public: self.pem("public", "PUBLIC KEY", EXPECT_PUBLIC)?,
            private: self.pem("private", "PRIVATE KEY", EXPECT_KEY)?,
        })
    }

    fn bootstrap_token(&self) -> Result<BootstrapToken, SecretsError> {
        self.deny_unknown(&["id", "secret"])?;
        let part = |key: &str, len: usize, expected: &str| -> Result<String, SecretsError> {
            let s = self.string(key, expected)?;
            if s.len() == len && s.bytes().all(token_char) {
                Ok(s.to_owned())
            } else {
                // The secret's value is not echoed into the message.
                let shown = if key == "id" {
                    format!("{s:?}")
                } else {
                    format!("a value of {} characters", s.chars().count())
                };
                Err(field_error(
                    self.name(key),
                    format!("{shown} is not valid"),
                    expected,
                ))
            }
        };
        Ok(BootstrapToken {
            id: part("id", 6, EXPECT_TOKEN_ID)?,
            secret: part("secret", 16, EXPECT_TOKEN_SECRET)?,
        })
    }
}

/// The characters of a bootstrap token (kubeadm's `[a-z0-9]`).
pub fn token_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// The same rule as the profile's `node.cluster.name`.
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// One PEM block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and decoded contents.
#[derive(Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

impl fmt::Debug for PemBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemBlock({}, {} bytes)", self.label, self.der.len())
    }
}

/// Every PEM block in `text`, in order (RFC 7468 strict-ish: BEGIN and END labels must match,
/// the body must be base64). Text between blocks is ignored, as OpenSSL does.
pub fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(format!("{label} block ends with {line:?}"));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(format!("{label} block has no END line"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("{label} block is not base64 ({e})"))?;
        if der.is_empty() {
            return Err(format!("{label} block is empty"));
        }
        blocks.push(PemBlock {
            label: label.to_owned(),
            der,
        });
    }
    Ok(blocks)
}

/// Checks that `text` is exactly one PEM block labelled `label`.
fn check_pem(text: &str, label: &str) -> Result<(), String> {
    let blocks = pem_blocks(text)?;
    match blocks.as_slice() {
        [one] if one.label == label => Ok(()),
        [one] => Err(format!("is a {} block", one.label)),
        [] => Err("holds no PEM block".into()),
        more => Err(format!("holds {} PEM blocks", more.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIC\n-----END PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMIID\n-----END PUBLIC KEY-----\n";

    fn pair(tag: &str) -> CertKey {
        // Distinct bodies so tests can tell the pairs apart.
        let b64 = base64::engine::general_purpose::STANDARD.encode(tag);
        CertKey {
            cert: format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"),
            key: format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
        }
    }

    fn sample() -> Secrets {
        Secrets {
            cluster_name: "prod-1".into(),
            created: 1_700_000_000,
            kubernetes_ca: pair("kubernetes-ca"),
            etcd_ca: pair("etcd-ca"),
            front_proxy_ca: pair("front-proxy-ca"),
            service_account: ServiceAccountKey {
                public: PUBLIC.into(),
                private: KEY.into(),
            },
            bootstrap_token: BootstrapToken {
                id: "abc123".into(),
                secret: "0123456789abcdef".into(),
            },
            admin: pair("admin"),
            etcd_admin: pair("etcd-admin"),
            keel_ca: pair("keel-ca"),
            keel_admin: pair("keel-admin"),
            node_api: pair("node-api"),
        }
    }

    #[test]
    fn round_trip_and_version_first() {
        let s = sample();
        let text = s.to_toml().unwrap();
        assert!(text.starts_with("version = 1\n"), "{text}");
        assert_eq!(Secrets::from_toml(&text).unwrap(), s);
        assert_eq!(s.bootstrap_token.token(), "abc123.0123456789abcdef");
        for role in [Role::ControlPlane, Role::Worker] {
            let node = s.for_role(role);
            let text = node.to_toml().unwrap();
            assert!(text.starts_with("version = 1\n"), "{text}");
            assert_eq!(NodeSecrets::from_toml(&text).unwrap(), node);
        }
    }

    #[test]
    fn debug_elides_keys_and_token_secret() {
        let text = format!("{:?} {:?}", sample(), sample().for_role(Role::ControlPlane));
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }

    #[test]
    fn worker_gets_no_ca_key() {
        let s = sample();
        let w = s.for_role(Role::Worker);
        assert_eq!(w.kubernetes_ca.key, None);
        assert!(w.etcd_ca.is_none() && w.front_proxy_ca.is_none());
        assert!(w.service_account.is_none());
        let text = w.to_toml().unwrap();
        let keys: Vec<PemBlock> = pem_blocks(&text)
            .unwrap()
            .into_iter()
            .filter(|b| b.label.contains("PRIVATE KEY"))
            .collect();
        // The node API key and nothing else.
        assert_eq!(keys.len(), 1);
        assert_eq!(keys, pem_blocks(&s.node_api.key).unwrap());
        for forbidden in [&s.keel_ca.key, &s.admin.key, &s.keel_admin.key] {
            assert!(!text.contains(forbidden.as_str()));
        }
        let cp = s.for_role(Role::ControlPlane).to_toml().unwrap();
        assert!(cp.contains(&s.etcd_ca.key) && cp.contains(&s.kubernetes_ca.key));
        for forbidden in [
            &s.keel_ca.key,
            &s.admin.key,
            &s.keel_admin.key,
            &s.etcd_admin.key,
        ] {
            assert!(!cp.contains(forbidden.as_str()));
        }
    }

    fn err(text: &str) -> String {
        Secrets::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field_and_what_was_expected() {
        let good = sample().to_toml().unwrap();
        let cases: Vec<(String, &str, &str)> = vec![
            (
                good.replace("id = \"abc123\"", "id = \"ABC123\""),
                "`bootstrap_token.id`: \"ABC123\" is not valid",
                "6 characters of a-z 0-9",
            ),
            (
                good.replace("secret = \"0123456789abcdef\"", "secret = \"short\""),
                "`bootstrap_token.secret`: a value of 5 characters is not valid",
                "16 characters",
            ),
            (
                good.replace("version = 1", "version = 2"),
                "`version`: 2 is not supported",
                "expected 1",
            ),
            (
                good.replace("version = 1", "version = \"1\""),
                "`version`: is a string",
                "expected version = 1",
            ),
            (
                good.replace("cluster_name = \"prod-1\"", "cluster_name = \"Prod\""),
                "`cluster_name`: \"Prod\" is not a cluster name",
                "lower-case",
            ),
            (
                good.replace("created = 1700000000", "created = -5"),
                "`created`: -5 is negative",
                "unix seconds",
            ),
            (
                good.replace("[etcd_ca]", "[etcd_ca]\nextra = 1"),
                "`etcd_ca.extra`: unknown field",
                "one of cert, key",
            ),
            (
                good.replace("version = 1", "version = 1\ncolour = \"red\""),
                "`colour`: unknown field",
                "one of version",
            ),
            (
                good.replacen(&sample().admin.key, &sample().admin.cert, 1),
                "`admin.key`: is a CERTIFICATE block",
                "PKCS#8 PEM private key",
            ),
            (
                good.replace("-----END PUBLIC KEY-----", ""),
                "`service_account.public`: PUBLIC KEY block has no END line",
                "a PEM public key",
            ),
        ];
        for (text, want, expected) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{e:?} should contain {want:?}");
            assert!(e.contains(expected), "{e:?} should contain {expected:?}");
        }
        // A missing table and a missing key in a table.
        let mut t: toml::Table = toml::from_str(&good).unwrap();
        t.remove("keel_admin");
        let e = err(&toml::to_string(&t).unwrap());
        assert!(
            e.starts_with("`keel_admin`: missing: expected a table"),
            "{e}"
        );
        let mut t: toml::Table = toml::from_str(&good).unwrap();
        t["front_proxy_ca"].as_table_mut().unwrap().remove("key");
        let e = err(&toml::to_string(&t).unwrap());
        assert!(
            e.starts_with("`front_proxy_ca.key`: missing: expected a PKCS#8"),
            "{e}"
        );
        assert!(err("version = ").starts_with("not valid TOML"));
    }

    #[test]
    fn node_files_must_match_their_role() {
        let s = sample();
        // A worker file carrying a CA key is refused, naming the field.
        let mut w: toml::Table =
            toml::from_str(&s.for_role(Role::Worker).to_toml().unwrap()).unwrap();
        w["kubernetes_ca"]
            .as_table_mut()
            .unwrap()
            .insert("key".into(), s.kubernetes_ca.key.clone().into());
        let e = NodeSecrets::from_toml(&toml::to_string(&w).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("`kubernetes_ca.key`: present in a worker's secrets"),
            "{e}"
        );
        let mut w: toml::Table =
            toml::from_str(&s.for_role(Role::Worker).to_toml().unwrap()).unwrap();
        w.insert("etcd_ca".into(), toml::Value::try_from(&s.etcd_ca).unwrap());
        let e = NodeSecrets::from_toml(&toml::to_string(&w).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("`etcd_ca`: present in a worker's secrets"),
            "{e}"
        );
        // The keel CA key never travels to a node.
        let mut w: toml::Table =
            toml::from_str(&s.for_role(Role::Worker).to_toml().unwrap()).unwrap();
        w["keel_ca"]
            .as_table_mut()
            .unwrap()
            .insert("key".into(), s.keel_ca.key.clone().into());
        let e = NodeSecrets::from_toml(&toml::to_string(&w).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`keel_ca.key`: unknown field"), "{e}");
        // A control plane without its service-account key is refused.
        let mut c: toml::Table =
            toml::from_str(&s.for_role(Role::ControlPlane).to_toml().unwrap()).unwrap();
        c.remove("service_account");
        let e = NodeSecrets::from_toml(&toml::to_string(&c).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`service_account`: missing"), "{e}");
        let mut c: toml::Table =
            toml::from_str(&s.for_role(Role::ControlPlane).to_toml().unwrap()).unwrap();
        c["role"] = "leader".into();
        let e = NodeSecrets::from_toml(&toml::to_string(&c).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`role`: \"leader\" is not a role"), "{e}");
    }

    #[test]
    fn pem_parsing() {
        assert_eq!(pem_blocks(CERT).unwrap()[0].label, "CERTIFICATE");
        assert_eq!(pem_blocks(&format!("junk\n{CERT}{KEY}")).unwrap().len(), 2);
        assert!(pem_blocks("-----BEGIN X-----\n!!\n-----END X-----\n").is_err());
        assert!(pem_blocks("-----BEGIN X-----\nAAAA\n-----END Y-----\n").is_err());
        assert!(check_pem(&format!("{CERT}{CERT}"), "CERTIFICATE").is_err());
        assert!(check_pem("", "CERTIFICATE").is_err());
    }
}
