//! Reading the secrets files' TOML by hand, so that every error names the full field.

use super::{
    BootstrapToken, CertKey, EXPECT_CERT, EXPECT_CLUSTER_NAME, EXPECT_KEY, EXPECT_PUBLIC,
    EXPECT_TOKEN_ID, EXPECT_TOKEN_SECRET, SecretsError, ServiceAccountKey, check_pem, field_error,
    token_char,
};
use crate::profile::ClusterName;

pub(super) fn parse_table(text: &str) -> Result<toml::Table, SecretsError> {
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
pub(super) struct Fields<'a> {
    table: &'a toml::Table,
    path: &'a str,
}

impl<'a> Fields<'a> {
    pub(super) fn root(table: &'a toml::Table) -> Self {
        Fields { table, path: "" }
    }

    pub(super) fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub(super) fn deny_unknown(&self, known: &[&str]) -> Result<(), SecretsError> {
        match self.table.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(field_error(
                self.name(k),
                "unknown field",
                format!("one of {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn value(&self, key: &str, expected: &str) -> Result<&'a toml::Value, SecretsError> {
        self.table
            .get(key)
            .ok_or_else(|| field_error(self.name(key), "missing", expected))
    }

    pub(super) fn string(&self, key: &str, expected: &str) -> Result<&'a str, SecretsError> {
        match self.value(key, expected)? {
            toml::Value::String(s) => Ok(s),
            other => Err(field_error(
                self.name(key),
                format!("is {}", describe(other)),
                expected,
            )),
        }
    }

    pub(super) fn integer(&self, key: &str, expected: &str) -> Result<i64, SecretsError> {
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
    pub(super) fn table(&self, key: &str, expected: &str) -> Result<Fields<'a>, SecretsError> {
        self.optional_table(key, expected)?
            .ok_or_else(|| field_error(self.name(key), "missing", expected))
    }

    pub(super) fn optional_table(
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

    pub(super) fn version(&self, supported: i64) -> Result<(), SecretsError> {
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

    pub(super) fn cluster_name(&self) -> Result<ClusterName, SecretsError> {
        let name = self.string("cluster_name", EXPECT_CLUSTER_NAME)?;
        if let Ok(name) = name.parse() {
            Ok(name)
        } else {
            Err(field_error(
                "cluster_name",
                format!("{name:?} is not a cluster name"),
                EXPECT_CLUSTER_NAME,
            ))
        }
    }

    pub(super) fn created(&self) -> Result<u64, SecretsError> {
        let expected = "unix seconds (a non-negative integer)";
        let n = self.integer("created", expected)?;
        u64::try_from(n).map_err(|_| field_error("created", format!("{n} is negative"), expected))
    }

    pub(super) fn pem(
        &self,
        key: &str,
        label: &str,
        expected: &str,
    ) -> Result<String, SecretsError> {
        let text = self.string(key, expected)?;
        check_pem(text, label).map_err(|problem| field_error(self.name(key), problem, expected))?;
        Ok(text.to_owned())
    }

    pub(super) fn cert_key(&self) -> Result<CertKey, SecretsError> {
        self.deny_unknown(&["cert", "key"])?;
        Ok(CertKey {
            cert: self.pem("cert", "CERTIFICATE", EXPECT_CERT)?,
            key: self.pem("key", "PRIVATE KEY", EXPECT_KEY)?,
        })
    }

    pub(super) fn service_account(&self) -> Result<ServiceAccountKey, SecretsError> {
        self.deny_unknown(&["public", "private"])?;
        Ok(ServiceAccountKey {
            public: self.pem("public", "PUBLIC KEY", EXPECT_PUBLIC)?,
            private: self.pem("private", "PRIVATE KEY", EXPECT_KEY)?,
        })
    }

    pub(super) fn bootstrap_token(&self) -> Result<BootstrapToken, SecretsError> {
        self.deny_unknown(&["id", "secret", "created"])?;
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
        let created = if self.has("created") {
            let expected = "unix seconds (a non-negative integer)";
            let n = self.integer("created", expected)?;
            Some(u64::try_from(n).map_err(|_| {
                field_error(self.name("created"), format!("{n} is negative"), expected)
            })?)
        } else {
            None
        };
        Ok(BootstrapToken {
            id: part("id", 6, EXPECT_TOKEN_ID)?,
            secret: part("secret", 16, EXPECT_TOKEN_SECRET)?,
            created,
        })
    }
}
