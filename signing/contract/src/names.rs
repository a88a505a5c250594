//! The one DNS-name rule. Every name Keel takes from a profile or a command line that ends up
//! in a host name, a partition GUID seed, a file name, a certificate, an etcd member or a
//! Kubernetes object follows RFC 1123 as Kubernetes checks it (`IsDNS1123Label`,
//! `IsDNS1123Subdomain`): lower-case letters, digits and `-`, a letter or digit at both ends
//! of each label, labels of at most 63 bytes, names of at most 253.
//!
//! The named types of the profile are built on these two checks and nothing else:
//! [`DnsLabel`] (cluster names), [`ShortName`] (image and container names, which also start
//! with a letter, as RFC 1035 labels do), [`DnsSubdomain`] (node names, cluster domains, label
//! key prefixes, etcd members) and [`Hostname`] (a subdomain written in any case).

use std::str::FromStr;

/// Longest label.
pub const MAX_LABEL: usize = 63;
/// Longest subdomain.
pub const MAX_SUBDOMAIN: usize = 253;

/// What is wrong with `s` as an RFC 1123 label, or `None`.
pub fn label_problem(s: &str) -> Option<&'static str> {
    let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if s.is_empty() {
        Some("it is empty")
    } else if s.len() > MAX_LABEL {
        Some("it is longer than 63 characters")
    } else if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only lower-case letters, digits and '-' are allowed")
    } else if !edge(s.bytes().next()) || !edge(s.bytes().last()) {
        Some("it must start and end with a letter or digit")
    } else {
        None
    }
}

/// What is wrong with `s` as an RFC 1123 subdomain (dot-separated labels), or `None`.
pub fn subdomain_problem(s: &str) -> Option<String> {
    if s.len() > MAX_SUBDOMAIN {
        return Some("it is longer than 253 characters".into());
    }
    s.split('.')
        .find_map(|label| label_problem(label).map(|why| format!("label {label:?}: {why}")))
}

/// Implements `Deserialize` via `FromStr` (the error text becomes the TOML error message, with
/// its line and column) and `Serialize` via `Display`, for a type that is a checked string.
macro_rules! string_value {
    ($ty:ty, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$ty, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
pub(crate) use string_value;

/// A checked string: `as_str`, `Display`, `Deref<Target = str>` (read it like a `&str`, as
/// Bottlerocket's modeled types do; it can only be built through `FromStr`), comparison with
/// `&str`.
macro_rules! checked_string {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        // Shown as the string it holds, so messages read `"prod"`, not `DnsLabel("prod")`.
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}
pub(crate) use checked_string;

/// An RFC 1123 label: `keel`, `prod-1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsLabel(String);
checked_string!(DnsLabel);

impl FromStr for DnsLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match label_problem(s) {
            None => Ok(DnsLabel(s.to_owned())),
            Some(why) => Err(format!(
                "invalid name {s:?}: {why}; expected 1-63 lower-case letters, digits or '-', starting and ending with a letter or digit"
            )),
        }
    }
}
string_value!(DnsLabel, "a DNS label like \"prod-1\"");

/// An RFC 1123 subdomain in lower case: `cp-1`, `cluster.local`, `example.com`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsSubdomain(String);
checked_string!(DnsSubdomain);

impl DnsSubdomain {
    /// Kubernetes' default cluster domain.
    pub fn cluster_local() -> Self {
        DnsSubdomain("cluster.local".to_owned())
    }
}

impl FromStr for DnsSubdomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match subdomain_problem(s) {
            None => Ok(DnsSubdomain(s.to_owned())),
            Some(why) => Err(format!(
                "invalid DNS name {s:?}: {why}; expected dot-separated labels of 1-63 lower-case letters, digits or '-' (not at either end)"
            )),
        }
    }
}
string_value!(DnsSubdomain, "a lower-case DNS name like \"cluster.local\"");

/// A label that also starts with a letter (RFC 1035), for names that become identifiers as
/// well as host-name parts: image names, baked container images, system containers.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortName(String);
checked_string!(ShortName);

impl FromStr for ShortName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let why = label_problem(s).or_else(|| {
            (!s.starts_with(|c: char| c.is_ascii_lowercase()))
                .then_some("it must start with a letter")
        });
        match why {
            None => Ok(ShortName(s.to_owned())),
            Some(why) => Err(format!(
                "invalid name {s:?}: {why}; expected 1-63 lower-case letters, digits or '-', starting with a letter"
            )),
        }
    }
}
string_value!(ShortName, "a name like \"keel-worker\"");

/// A host name: an RFC 1123 subdomain, accepted in any case and kept in lower case (as DNS
/// compares names).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);
checked_string!(Hostname);

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        match subdomain_problem(&lower) {
            None => Ok(Hostname(lower)),
            Some(why) => Err(format!(
                "invalid hostname {s:?}: {why}; expected dot-separated labels of 1-63 letters, digits or '-' (not at either end)"
            )),
        }
    }
}
string_value!(Hostname, "a hostname like \"worker-1\"");

impl From<Hostname> for DnsSubdomain {
    fn from(h: Hostname) -> Self {
        DnsSubdomain(h.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for good in ["a", "keel", "prod-1", "1abc", &"a".repeat(63)] {
            assert!(good.parse::<DnsLabel>().is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(bad.parse::<DnsLabel>().is_err(), "{bad}");
        }
    }

    #[test]
    fn subdomains() {
        for good in ["a", "cp-1.example", "cluster.local", "1.2.3.4"] {
            assert!(good.parse::<DnsSubdomain>().is_ok(), "{good}");
        }
        for bad in ["", "CP-1", "cp_1", "-cp", "cp-", "a..b", ".a", "a."] {
            assert!(bad.parse::<DnsSubdomain>().is_err(), "{bad}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(long.parse::<DnsSubdomain>().is_err());
    }

    #[test]
    fn short_names_start_with_a_letter() {
        assert!("keel-worker".parse::<ShortName>().is_ok());
        for bad in ["Keel", "1keel", "", "keel_worker", "keel-", &"a".repeat(64)] {
            assert!(bad.parse::<ShortName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hostnames_are_kept_in_lower_case() {
        assert_eq!(
            "Node-1.Example".parse::<Hostname>().unwrap().as_str(),
            "node-1.example"
        );
        for bad in ["-a", "a-", "a..b", "a_b", ""] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad}");
        }
    }
}
