//! Where `keel node` gets its credentials. Kept apart from the client because the cluster
//! secrets file is defined elsewhere: only this file knows its layout.

use std::path::Path;

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

/// The agreed layout of the secrets file: TOML with `[keel_ca] cert` and
/// `[keel_admin] cert`, `key`, each a PEM string.
pub fn credentials_from_secrets(path: &Path) -> Result<ClientCredentials, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    credentials_from_secrets_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn credentials_from_secrets_toml(text: &str) -> Result<ClientCredentials, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
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
        cert_pem: pem("keel_admin", "cert")?,
        key_pem: pem("keel_admin", "key")?,
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
