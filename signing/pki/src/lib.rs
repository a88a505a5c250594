//! The cluster PKI: generating the cluster [`Secrets`] and deriving a node's
//! certificates and kubeconfigs from its [`NodeSecrets`](keel_contract::secrets::NodeSecrets), with
//! rcgen on ring.
//!
//! Choices, in one place:
//! - **Keys** are ECDSA P-256 (PKCS#8 PEM), everywhere. Kubernetes, etcd and Go's TLS accept
//!   them, they are small, and ring generates them in microseconds.
//! - **The service-account key** is ECDSA P-256 too: kube-apiserver signs tokens with ES256
//!   from an EC `--service-account-signing-key-file` and verifies them with the matching
//!   `--service-account-key-file`. RSA would only matter for token consumers that support
//!   nothing but RS256, and ring cannot generate RSA keys (it would take a second RSA library
//!   into the static init).
//! - **Validity**: CAs from `created - 1 hour` for 10 years (3650 days); leaf certificates
//!   from `now - 1 hour` for 1 year (365 days), cut to their CA's end. The hour absorbs clock
//!   skew between the machine that issued a certificate and the ones that check it.
//! - **Serial numbers** are derived, not random: the first 16 bytes of SHA-256 over a
//!   domain tag, the certificate's purpose, its subject public key and its start time, with
//!   the top bit cleared (positive) and the next one set (always 16 bytes, never zero). Every
//!   leaf has a fresh key, so serials stay unique per CA (RFC 5280) without a random source,
//!   and the same inputs give the same certificate serial.
//! - **Extensions**: CAs have basicConstraints `CA:TRUE, pathlen:0` (critical), keyUsage
//!   `keyCertSign, cRLSign, digitalSignature` (critical) and a subject key identifier; leaves
//!   have `CA:FALSE`, keyUsage `digitalSignature`, the extended key usages they need, subject
//!   and authority key identifiers, and their SANs.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod derive;
pub mod kubeconfig;

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use keel_contract::api::OperatorRole;
use keel_contract::profile::{ClusterName, Endpoint};
use keel_contract::secrets::{
    BootstrapToken, CertKey, NODE_API_NAME, Secrets, ServiceAccountKey, pem_blocks, token_char,
};

pub use derive::{DerivedFile, NodeIdentity, derive, first_service_ip, write_files};

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// How long a CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a leaf certificate is valid (at most: never past its CA).
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// Certificates start this long before the time they were made (clock skew).
pub const BACKDATE_SECONDS: i64 = HOUR;

/// Subjects of the generated certificates (operators and other tools may look for them).
pub mod names {
    pub const KUBERNETES_CA: &str = "kubernetes";
    pub const ETCD_CA: &str = "etcd-ca";
    pub const FRONT_PROXY_CA: &str = "front-proxy-ca";
    pub const KEEL_CA: &str = "keel-ca";
    /// The Kubernetes admin's CN (and the keel admin's, under the keel CA).
    pub const ADMIN: &str = "keel-admin";
    pub const ETCD_ADMIN: &str = "keel-etcd-admin";
    /// Kubernetes' superuser group: needs no RBAC binding to exist yet.
    pub const MASTERS: &str = "system:masters";
    /// The read-only keel operator's CN (its role is its O, from keel-contract).
    pub const READ_ONLY: &str = "keel-read-only";
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Bad input: a name or address that cannot go into a certificate.
    #[error("{0}")]
    Input(String),
    /// A secret that parses as PEM but cannot be used (wrong key for its certificate, not a
    /// CA, expired).
    #[error("`{field}`: {problem}")]
    Secret { field: String, problem: String },
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("no random numbers from the OS: {0}")]
    Random(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl PkiError {
    /// Bad input rather than a failure (the CLI's exit code 2).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, PkiError::Input(_) | PkiError::Secret { .. })
    }
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Rcgen { what, source }
}

fn secret_err(field: &str, problem: impl Into<String>) -> PkiError {
    PkiError::Secret {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

fn at(secs: i64) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| PkiError::Input(format!("time {secs} is out of range for a certificate")))
}

fn unix(now: u64) -> Result<i64, PkiError> {
    i64::try_from(now).map_err(|_| PkiError::Input(format!("time {now} is out of range")))
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err("generating a P-256 key"))
}

/// See the module documentation: positive, 16 bytes, a function of what the certificate is.
fn serial(purpose: &str, spki: &[u8], not_before: i64) -> SerialNumber {
    let mut h = Sha256::new();
    h.update(b"keel certificate serial v1\0");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(spki);
    h.update(not_before.to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn subject(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// A DNS name SAN; IP addresses written as names become IP SANs.
fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    if host.parse::<keel_contract::profile::Hostname>().is_err() {
        return Err(PkiError::Input(format!(
            "{name:?} cannot go into a certificate: expected an IP address or a DNS name"
        )));
    }
    let ia5 = name
        .to_ascii_lowercase()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Input(format!("{name:?}: {e}")))?;
    Ok(SanType::DnsName(ia5))
}

/// Appends SANs, skipping duplicates (the endpoint host is often a node IP too).
fn push_san(sans: &mut Vec<SanType>, s: SanType) {
    if !sans.contains(&s) {
        sans.push(s);
    }
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
    /// etcd's server and peer certificates: they serve and they dial each other.
    ServerAndClient,
}

struct Leaf<'a> {
    /// Names the certificate in the serial number and in errors.
    purpose: &'a str,
    cn: &'a str,
    org: Option<&'a str>,
    usage: Usage,
    sans: Vec<SanType>,
}

impl<'a> Leaf<'a> {
    fn client(purpose: &'a str, cn: &'a str, org: Option<&'a str>) -> Self {
        Leaf {
            purpose,
            cn,
            org,
            usage: Usage::Client,
            sans: Vec::new(),
        }
    }
}

/// A CA loaded from its PEM certificate and key, ready to sign.
struct Ca {
    field: &'static str,
    issuer: Issuer<'static, KeyPair>,
    not_after: i64,
}

impl Ca {
    /// A new self-signed CA valid from `created - 1 hour` for [`CA_VALIDITY_DAYS`].
    fn create(cn: &str, created: i64) -> Result<CertKey, PkiError> {
        let key = new_key()?;
        let not_before = created - BACKDATE_SECONDS;
        let mut p = CertificateParams::default();
        p.distinguished_name = subject(cn, None);
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = at(not_before)?;
        p.not_after = at(not_before + CA_VALIDITY_DAYS * DAY)?;
        p.serial_number = Some(serial(
            &format!("ca/{cn}"),
            &key.subject_public_key_info(),
            not_before,
        ));
        let cert = p
            .self_signed(&key)
            .map_err(rcgen_err(format!("signing the {cn} CA")))?;
        Ok(CertKey {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Loads a CA for signing, checking that the key is the certificate's and that the
    /// certificate is a CA. `field` names the secret in errors.
    fn load(field: &'static str, cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let der = pem_blocks(cert_pem)
            .map_err(|e| secret_err(field, e))?
            .into_iter()
            .find(|b| b.label == "CERTIFICATE")
            .ok_or_else(|| secret_err(field, "no certificate"))?
            .der;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| secret_err(field, format!("not an X.509 certificate ({e})")))?;
        if !cert.is_ca() {
            return Err(secret_err(field, "the certificate is not a CA"));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| secret_err(field, format!("unusable key ({e})")))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(secret_err(
                field,
                "the key does not belong to the certificate",
            ));
        }
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(rcgen_err(format!("loading {field}")))?;
        Ok(Ca {
            field,
            issuer,
            not_after,
        })
    }

    /// Issues a leaf with a fresh key, valid from `now - 1 hour` for [`LEAF_VALIDITY_DAYS`]
    /// or until the CA ends, whichever is first.
    fn issue(&self, leaf: &Leaf<'_>, now: i64) -> Result<CertKey, PkiError> {
        if now >= self.not_after - HOUR {
            return Err(secret_err(
                self.field,
                format!(
                    "the CA certificate expires at {} (unix seconds): generate new secrets",
                    self.not_after
                ),
            ));
        }
        let key = new_key()?;
        let not_before = now - BACKDATE_SECONDS;
        let mut p = CertificateParams::default();
        p.distinguished_name = subject(leaf.cn, leaf.org);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = match leaf.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        p.subject_alt_names = leaf.sans.clone();
        p.use_authority_key_identifier_extension = true;
        p.not_before = at(not_before)?;
        p.not_after = at((now + LEAF_VALIDITY_DAYS * DAY).min(self.not_after))?;
        p.serial_number = Some(serial(
            leaf.purpose,
            &key.subject_public_key_info(),
            not_before,
        ));
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err(format!("signing {}", leaf.purpose)))?;
        Ok(CertKey {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// `keel secrets gen`: every CA, the service-account key, a bootstrap token, and the
/// operator's and nodes' shared certificates, as of `now` (unix seconds).
pub fn generate(cluster_name: &str, now: u64) -> Result<Secrets, PkiError> {
    let cluster_name: ClusterName = cluster_name
        .parse()
        .map_err(|e| PkiError::Input(format!("cluster name: {e}")))?;
    let created = unix(now)?;
    let kubernetes_ca = Ca::create(names::KUBERNETES_CA, created)?;
    let etcd_ca = Ca::create(names::ETCD_CA, created)?;
    let front_proxy_ca = Ca::create(names::FRONT_PROXY_CA, created)?;
    let keel_ca = Ca::create(names::KEEL_CA, created)?;

    let k8s = Ca::load("kubernetes_ca", &kubernetes_ca.cert, &kubernetes_ca.key)?;
    let etcd = Ca::load("etcd_ca", &etcd_ca.cert, &etcd_ca.key)?;
    let keel = Ca::load("keel_ca", &keel_ca.cert, &keel_ca.key)?;

    let admin = k8s.issue(
        &Leaf::client("admin", names::ADMIN, Some(names::MASTERS)),
        created,
    )?;
    let etcd_admin = etcd.issue(
        &Leaf::client("etcd-admin", names::ETCD_ADMIN, None),
        created,
    )?;
    let keel_admin = issue_operator(&keel, OperatorRole::Admin, created)?;
    let keel_read_only = issue_operator(&keel, OperatorRole::ReadOnly, created)?;
    let node_api = shared_node_api(&keel, created)?;
    let sa = new_key()?;
    Ok(Secrets {
        cluster_name,
        created: now,
        kubernetes_ca,
        etcd_ca,
        front_proxy_ca,
        service_account: ServiceAccountKey {
            public: sa.public_key_pem(),
            private: sa.serialize_pem(),
        },
        bootstrap_token: new_token(None)?,
        admin,
        etcd_admin,
        keel_ca,
        keel_admin,
        keel_read_only: Some(keel_read_only),
        node_api,
    })
}

/// `keel secrets renew`: the same secrets with every leaf certificate issued again as of
/// `now` (fresh keys, a new year of validity): the Kubernetes and etcd admins, both keel
/// operators (a read-only one is added to files from before roles) and the shared node API
/// certificate; and a new bootstrap token made `now` (the old one may be past its time to
/// live). The CAs and the service-account key are kept, so running nodes and kubeconfigs
/// keep trusting them.
pub fn renew(secrets: &Secrets, now: u64) -> Result<Secrets, PkiError> {
    let bootstrap_token = new_token(Some(now))?;
    let now = unix(now)?;
    let k8s = Ca::load(
        "kubernetes_ca",
        &secrets.kubernetes_ca.cert,
        &secrets.kubernetes_ca.key,
    )?;
    let etcd = Ca::load("etcd_ca", &secrets.etcd_ca.cert, &secrets.etcd_ca.key)?;
    let keel = Ca::load("keel_ca", &secrets.keel_ca.cert, &secrets.keel_ca.key)?;
    Ok(Secrets {
        admin: k8s.issue(
            &Leaf::client("admin", names::ADMIN, Some(names::MASTERS)),
            now,
        )?,
        etcd_admin: etcd.issue(&Leaf::client("etcd-admin", names::ETCD_ADMIN, None), now)?,
        keel_admin: issue_operator(&keel, OperatorRole::Admin, now)?,
        keel_read_only: Some(issue_operator(&keel, OperatorRole::ReadOnly, now)?),
        node_api: shared_node_api(&keel, now)?,
        bootstrap_token,
        ..secrets.clone()
    })
}

/// The serving certificate every node shares (CN and DNS SAN `keel-node`).
fn shared_node_api(keel: &Ca, now: i64) -> Result<CertKey, PkiError> {
    keel.issue(
        &Leaf {
            purpose: "node-api",
            cn: NODE_API_NAME,
            org: None,
            usage: Usage::Server,
            sans: vec![san(NODE_API_NAME)?],
        },
        now,
    )
}

/// A `keel node` operator's client certificate from the keel CA, its role in its subject's
/// organisation (keel-contract's [`OperatorRole::organization`]).
fn issue_operator(keel: &Ca, role: OperatorRole, now: i64) -> Result<CertKey, PkiError> {
    let (purpose, cn) = match role {
        OperatorRole::Admin => ("keel-admin", names::ADMIN),
        OperatorRole::ReadOnly => ("keel-read-only", names::READ_ONLY),
    };
    keel.issue(&Leaf::client(purpose, cn, Some(role.organization())), now)
}

/// `keel secrets node NAME --ip ...`: a node's own API serving certificate from the keel CA
/// (CN=NAME; DNS SANs NAME and `keel-node`, so clients that only know the shared name still
/// connect; IP SANs `ips`), as of `now`. `keel node --node NAME` checks for NAME.
pub fn issue_node_api(
    secrets: &Secrets,
    name: &str,
    ips: &[IpAddr],
    now: u64,
) -> Result<CertKey, PkiError> {
    let keel = Ca::load("keel_ca", &secrets.keel_ca.cert, &secrets.keel_ca.key)?;
    if name == NODE_API_NAME {
        return Err(PkiError::Input(format!(
            "{name:?} is the name every node shares: expected the node's own name"
        )));
    }
    let mut sans = Vec::new();
    push_san(&mut sans, san(name)?);
    push_san(&mut sans, san(NODE_API_NAME)?);
    for ip in ips {
        push_san(&mut sans, SanType::IpAddress(*ip));
    }
    let purpose = format!("node-api/{name}");
    keel.issue(
        &Leaf {
            purpose: &purpose,
            cn: name,
            org: None,
            usage: Usage::Server,
            sans,
        },
        unix(now)?,
    )
}

/// The names a certificate (DER) is for: its DNS and IP SANs, and when it ends (unix
/// seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_after: i64,
}

pub fn cert_names(cert_der: &[u8]) -> Result<CertNames, PkiError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Input(format!("not an X.509 certificate ({e})")))?;
    let mut names = CertNames {
        dns: Vec::new(),
        ips: Vec::new(),
        not_after: cert.validity().not_after.timestamp(),
    };
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Input(format!("unreadable subjectAltName ({e})")))?;
    for name in sans.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => names.dns.push(d.to_ascii_lowercase()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => names
                    .ips
                    .push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                16 => names
                    .ips
                    .push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(names)
}

/// A certificate's (DER) serial number, in hex, as `openssl x509 -serial` shows it.
pub fn cert_serial(cert_der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Input(format!("not an X.509 certificate ({e})")))?;
    Ok(cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}

/// When the first certificate in a PEM string ends (unix seconds).
pub fn not_after_pem(cert_pem: &str) -> Result<i64, PkiError> {
    let der = pem_blocks(cert_pem)
        .map_err(PkiError::Input)?
        .into_iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| PkiError::Input("no certificate in the PEM".into()))?
        .der;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Input(format!("not an X.509 certificate ({e})")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// A time as RFC 3339 in UTC (`2026-12-02T13:00:00Z`), as Kubernetes writes times.
pub fn rfc3339(secs: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// A day as `YYYY-MM-DD` (UTC), for saying when a certificate ends.
pub fn utc_date(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => format!("{secs} (unix seconds)"),
    }
}

/// The API role of a client certificate (DER) the keel CA issued: what the node allows it.
/// By its subject organisations, as [`OperatorRole::from_organizations`] says.
pub fn operator_role(cert_der: &[u8]) -> Result<OperatorRole, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::Input(format!("the client certificate: not X.509 ({e})")))?;
    let mut orgs = Vec::new();
    for o in cert.subject().iter_organization() {
        let o = o.as_str().map_err(|e| {
            PkiError::Input(format!("the client certificate: an unreadable O ({e})"))
        })?;
        orgs.push(o);
    }
    Ok(OperatorRole::from_organizations(orgs))
}

/// A new bootstrap token; `created` when it is younger than the secrets.
fn new_token(created: Option<u64>) -> Result<BootstrapToken, PkiError> {
    Ok(BootstrapToken {
        id: random_token_chars(6)?,
        secret: random_token_chars(16)?,
        created,
    })
}

/// `len` characters of `[a-z0-9]`, uniformly (rejection sampling: bytes >= 252 are
/// redrawn so that `% 36` has no bias).
fn random_token_chars(len: usize) -> Result<String, PkiError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 32];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| PkiError::Random(e.to_string()))?;
        for b in buf {
            if out.len() < len && b < 252 {
                out.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    debug_assert!(out.bytes().all(token_char));
    Ok(out)
}

/// The operator's kubeconfig (`admin.kubeconfig` beside the secrets file): the admin's
/// client certificate against `endpoint`, trusting the cluster's Kubernetes CA.
pub fn admin_kubeconfig(secrets: &Secrets, endpoint: &Endpoint) -> String {
    kubeconfig::Kubeconfig::with_client_cert(
        &secrets.cluster_name,
        &endpoint.to_string(),
        &secrets.kubernetes_ca.cert,
        names::ADMIN,
        &secrets.admin,
    )
    .to_yaml()
}

#[cfg(test)]
mod tests;
