//! Where `keel node` gets its credentials. Kept apart from the client because the cluster
//! secrets file is defined elsewhere: only this file knows its layout.

use std::path::Path;

use keel_contract::api::OperatorRole;

/// What the client needs for mutual TLS: the keel CA that issued the node's certificate, and
/// the operator's (admin) client certificate and key, all PEM.
#[derive(Clone)]
pub struct ClientCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClientCredentials {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials").finish_non_exhaustive()
    }
}

/// The admin's credentials: see [`credentials_for`].
pub fn credentials_from_secrets(path: &Path) -> Result<ClientCredentials, String> {
    credentials_for(path, OperatorRole::Admin)
}

/// The agreed layout of the secrets file: TOML with `[keel_ca] cert` and the operator's
/// `[keel_admin]` or `[keel_read_only]` `cert`, `key`, each a PEM string. Only those are
/// read, so a read-only operator can be given a file with nothing else in it.
pub fn credentials_for(path: &Path, role: OperatorRole) -> Result<ClientCredentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    credentials_toml_for(&text, role).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn credentials_from_secrets_toml(text: &str) -> Result<ClientCredentials, String> {
    credentials_toml_for(text, OperatorRole::Admin)
}

/// The table holding an operator role's certificate and key in the secrets file.
pub fn operator_section(role: OperatorRole) -> &'static str {
    match role {
        OperatorRole::Admin => "keel_admin",
        OperatorRole::ReadOnly => "keel_read_only",
    }
}

pub fn credentials_toml_for(text: &str, role: OperatorRole) -> Result<ClientCredentials, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let section = operator_section(role);
    if role == OperatorRole::ReadOnly && !table.contains_key(section) {
        return Err(format!(
            "no `{section}` table: these secrets are from before read-only operators; `keel secrets renew FILE` adds one"
        ));
    }
    let pem = |section: &str, key: &str| -> Result<String, String> {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("missing `{section}.{key}` (a PEM string)"))
    };
    Ok(ClientCredentials {
        ca_pem: pem("keel_ca", "cert")?,
        cert_pem: pem(section, "cert")?,
        key_pem: pem(section, "key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agreed_tables() {
        let creds = credentials_from_secrets_toml(
            r#"
[keel_ca]
cert = "CA PEM"
key = "never read"
[keel_admin]
cert = "ADMIN CERT"
key = """
ADMIN KEY
"""
[other]
x = 1
"#,
        )
        .unwrap();
        assert_eq!(creds.ca_pem, "CA PEM");
        assert_eq!(creds.cert_pem, "ADMIN CERT");
        assert_eq!(creds.key_pem, "ADMIN KEY\n");
        assert!(!format!("{creds:?}").contains("ADMIN KEY"));
    }

    #[test]
    fn reads_the_read_only_operator() {
        let text = "[keel_ca]\ncert = \"CA\"\n[keel_read_only]\ncert = \"RO\"\nkey = \"ROK\"\n";
        let creds = credentials_toml_for(text, OperatorRole::ReadOnly).unwrap();
        assert_eq!(
            (creds.cert_pem.as_str(), creds.key_pem.as_str()),
            ("RO", "ROK")
        );
        let err = credentials_toml_for(text, OperatorRole::Admin).unwrap_err();
        assert!(err.contains("missing `keel_admin.cert`"), "{err}");
        let err =
            credentials_toml_for("[keel_ca]\ncert = \"CA\"\n", OperatorRole::ReadOnly).unwrap_err();
        assert!(err.contains("keel secrets renew"), "{err}");
    }

    #[test]
    fn names_what_is_missing() {
        let err =
            credentials_from_secrets_toml("[keel_ca]\ncert = \"x\"\n[keel_admin]\ncert = \"y\"\n")
                .unwrap_err();
        assert!(err.contains("`keel_admin.key`"), "{err}");
        let err = credentials_from_secrets_toml("[keel_ca]\ncert = 1\n").unwrap_err();
        assert!(err.contains("`keel_ca.cert`"), "{err}");
        assert!(credentials_from_secrets_toml("not toml [").is_err());
    }
}
