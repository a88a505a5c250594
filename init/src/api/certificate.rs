//! A renewed API serving certificate, pushed by an admin (`POST /v1/certificate`, issue 11):
//! checked, saved to STATE, and served on every new connection from then on, without a
//! reboot. Connections already open keep the certificate they were served.
//!
//! What the node accepts is what its clients would: a certificate the keel CA the node
//! already trusts for its API issued (a push never brings another CA: that CA is what let
//! the admin in), currently valid, for `keel-node`, with the key that matches it, and naming
//! either only `keel-node` (the shared certificate) or this node's hostname (its own).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use keel_contract::api::{CertificateReport, NodeCertificate, SERVER_NAME};
use keel_contract::layout;
use keel_contract::secrets::NODE_API_NAME;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ApiError;
use super::tls::{certs_from_pem, key_from_pem, provider};

/// Why an offered certificate is refused (the API's 400, the boot's warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("`cert`: {0}")]
    Unreadable(String),
    #[error("`key`: {0}")]
    Key(String),
    #[error("`key` is not the key of `cert` (they are from different issues?)")]
    KeyMismatch,
    #[error(
        "`cert` was not issued by the keel CA this node trusts (another cluster's secrets?): {0}"
    )]
    WrongCa(String),
    #[error("`cert` is not valid now (node clock {now}): {problem}")]
    NotValid { now: String, problem: String },
    #[error("`cert` is not for {SERVER_NAME}, the name every client checks: {0}")]
    NotForServerName(String),
    #[error(
        "`cert` is for {names}: expected the shared {NODE_API_NAME} certificate or one naming this node, {hostname}"
    )]
    WrongName { names: String, hostname: String },
}

/// A certificate that passed [`check`], ready to serve.
#[derive(Debug, Clone)]
pub struct Checked {
    key: Arc<CertifiedKey>,
    pub report: CertificateReport,
}

/// Checks `offered` for this node: see the module documentation. `trusted_ca_pem` is the
/// keel CA the node verifies its clients with; `now` is the node's clock.
pub fn check(
    offered: &NodeCertificate,
    trusted_ca_pem: &str,
    hostname: &str,
    now: UnixTime,
) -> Result<Checked, CertificateError> {
    let chain = certs_from_pem("the certificate", &offered.cert)
        .map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    let key =
        key_from_pem("the key", &offered.key).map_err(|e| CertificateError::Key(e.to_string()))?;
    let provider = provider();
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertificateError::KeyMismatch,
        e => CertificateError::Key(e.to_string()),
    })?;
    certified
        .keys_match()
        .map_err(|_| CertificateError::KeyMismatch)?;
    verify_chain(&chain, trusted_ca_pem, now)?;
    let leaf = chain
        .first()
        .ok_or_else(|| CertificateError::Unreadable("no certificate".into()))?
        .as_ref();
    let names =
        keel_pki::cert_names(leaf).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    let shared = names.dns == [NODE_API_NAME] && names.ips.is_empty();
    if !shared && !names.dns.contains(&hostname.to_ascii_lowercase()) {
        return Err(CertificateError::WrongName {
            names: names.dns.join(", "),
            hostname: hostname.to_owned(),
        });
    }
    let serial =
        keel_pki::cert_serial(leaf).map_err(|e| CertificateError::Unreadable(e.to_string()))?;
    Ok(Checked {
        key: Arc::new(certified),
        report: CertificateReport {
            names: names.dns,
            not_after: names.not_after,
            serial,
        },
    })
}

/// The chain, the validity and `keel-node`, as a `keel node` client verifies them.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    trusted_ca_pem: &str,
    now: UnixTime,
) -> Result<(), CertificateError> {
    let internal = |e: String| CertificateError::WrongCa(format!("the node's keel CA: {e}"));
    let mut roots = RootCertStore::empty();
    for ca in certs_from_pem("the keel CA", trusted_ca_pem).map_err(|e| internal(e.to_string()))? {
        roots.add(ca).map_err(|e| internal(e.to_string()))?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| internal(e.to_string()))?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| internal(e.to_string()))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| CertificateError::Unreadable("no certificate".into()))?;
    verifier
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map(|_| ())
        .map_err(|e| classify(e, now))
}

fn classify(e: rustls::Error, now: UnixTime) -> CertificateError {
    use rustls::CertificateError as C;
    let problem = e.to_string();
    match e {
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => CertificateError::NotValid {
            now: i64::try_from(now.as_secs())
                .ok()
                .and_then(keel_pki::rfc3339)
                .unwrap_or_else(|| format!("{} (unix seconds)", now.as_secs())),
            problem,
        },
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => CertificateError::NotForServerName(problem),
        _ => CertificateError::WrongCa(problem),
    }
}

/// The serving certificate, swapped under the running server: each handshake takes the
/// one current when it starts.
#[derive(Debug)]
pub(crate) struct Serving(RwLock<Arc<CertifiedKey>>);

impl Serving {
    pub(crate) fn new(key: Arc<CertifiedKey>) -> Self {
        Serving(RwLock::new(key))
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for Serving {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl super::ServerTls {
    /// Serves `checked` on every connection from now on.
    pub fn serve(&self, checked: &Checked) {
        self.serving.replace(checked.key.clone());
    }
}

/// Where a pushed certificate goes: checked against what the node trusts and is, saved to
/// STATE, then served.
pub struct Renewal {
    pub tls: super::ServerTls,
    /// The keel CA the API verifies clients with.
    pub trusted_ca_pem: String,
    pub hostname: String,
    /// STATE's mount point.
    pub state: PathBuf,
    pub log: fn(&str),
}

impl Renewal {
    /// The API's `POST /v1/certificate`: 400 for a certificate this node must not serve
    /// (nothing saved or changed), 500 when it cannot be saved (nothing changed either: a
    /// certificate served but lost at the next boot would surprise whoever renewed it).
    pub fn renew(
        &self,
        offered: &NodeCertificate,
        now: UnixTime,
    ) -> Result<CertificateReport, ApiError> {
        let checked = check(offered, &self.trusted_ca_pem, &self.hostname, now)
            .map_err(|e| ApiError::bad_request(format!("certificate refused: {e}")))?;
        save(&self.state, offered).map_err(|e| {
            ApiError::internal(format!(
                "the certificate could not be saved to STATE, nothing changed: {e}"
            ))
        })?;
        self.tls.serve(&checked);
        let r = &checked.report;
        (self.log)(&format!(
            "API certificate renewed: {} (serial {}) valid until {}, served on new connections",
            r.names.join(", "),
            r.serial,
            keel_pki::rfc3339(r.not_after).unwrap_or_else(|| r.not_after.to_string())
        ));
        Ok(checked.report)
    }
}

/// Writes the certificate to STATE so that a power cut leaves the old file or the new one:
/// a temporary file, synced, renamed, the directory synced; readable by root only (STATE is
/// FAT, mounted with fmask=0177, which makes it so anyway).
pub fn save(state: &Path, offered: &NodeCertificate) -> std::io::Result<()> {
    let text = toml::to_string(offered).map_err(std::io::Error::other)?;
    let path = layout::on_volume(state, layout::state::API_CERTIFICATE);
    let tmp = path.with_extension("toml.new");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    crate::sys::rename_durably(&tmp, &path)
}

/// At boot: the certificate a push saved to STATE, when it still passes [`check`] and ends
/// no earlier than `from_secrets` (the secrets' `node_api`: newer secrets given at boot win
/// over an older push; a push wins over the secrets it renewed, given again at every boot). `Err` is a warning for the console, and the secrets' certificate serves.
pub fn saved(
    state: &Path,
    from_secrets: &NodeCertificate,
    trusted_ca_pem: &str,
    hostname: &str,
    now: UnixTime,
) -> Result<Option<(NodeCertificate, CertificateReport)>, String> {
    let path = layout::on_volume(state, layout::state::API_CERTIFICATE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let offered: NodeCertificate =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let checked = check(&offered, trusted_ca_pem, hostname, now)
        .map_err(|e| format!("the renewed API certificate on STATE is not used: {e}"))?;
    let secrets_end = keel_pki::not_after_pem(&from_secrets.cert).unwrap_or(i64::MIN);
    if checked.report.not_after < secrets_end {
        return Ok(None);
    }
    Ok(Some((offered, checked.report)))
}

#[cfg(test)]
#[path = "certificate_tests.rs"]
mod tests;
