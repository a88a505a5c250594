//! Kubernetes values in a profile (`[node.kubernetes]`, `[node.etcd]`), checked while the
//! profile is parsed the way the kubelet, the API server and etcd check them, so that a bad
//! value fails `keel profile check` with its file, line and column instead of failing the
//! node at boot. Modelled on Bottlerocket's `modeled-types`: each type can only hold a valid
//! value, and the node renders them without checking again.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::names::{DnsSubdomain, Hostname, checked_string, string_value, subdomain_problem};

/// The name part of a qualified name or a label value: at most 63 characters, letters,
/// digits, `-`, `_` and `.`, a letter or digit at both ends (Kubernetes' `IsQualifiedName`).
fn name_problem(name: &str) -> Option<&'static str> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > 63 {
        Some("is longer than 63 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        Some(
            "must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        )
    } else {
        None
    }
}

/// A label or taint key: an optional DNS-subdomain prefix and `/`, then a name
/// (`example.com/tier`, `zone`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelKey(String);
checked_string!(LabelKey);

impl LabelKey {
    /// The prefix before `/`, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.0.split_once('/').map(|(p, _)| p)
    }
}

impl FromStr for LabelKey {
    type Err = String;
    fn from_str(key: &str) -> Result<Self, String> {
        let (prefix, name) = match key.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, key),
        };
        let why = if let Some(prefix) = prefix
            && subdomain_problem(prefix).is_some()
        {
            format!("the prefix {prefix:?} is not a lower-case DNS subdomain")
        } else if name.is_empty() {
            "the key's name is empty".to_owned()
        } else if let Some(why) = name_problem(name) {
            format!("the key's name {name:?} {why}")
        } else {
            return Ok(LabelKey(key.to_owned()));
        };
        Err(format!("invalid key {key:?}: {why}"))
    }
}
string_value!(LabelKey, "a label key like \"example.com/tier\"");

/// A label value: empty, or like a key's name.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelValue(String);
checked_string!(LabelValue);

impl FromStr for LabelValue {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match name_problem(value).filter(|_| !value.is_empty()) {
            None => Ok(LabelValue(value.to_owned())),
            Some(why) => Err(format!("invalid label value {value:?}: the value {why}")),
        }
    }
}
string_value!(LabelValue, "a label value like \"edge\"");

/// A label key the kubelet may register for its own node (k8s.io/kubelet's
/// `IsKubeletLabel`): in the `kubernetes.io` and `k8s.io` namespaces only a few well-known
/// keys and the `kubelet.kubernetes.io` and `node.kubernetes.io` namespaces, so that a node
/// cannot claim e.g. a control-plane role for itself. The kubelet exits at every start on
/// any other ("unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeLabelKey(LabelKey);

impl NodeLabelKey {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for NodeLabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Labels the kubelet may set in the restricted namespaces.
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
];
const KUBELET_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

impl FromStr for NodeLabelKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let key: LabelKey = s.parse().map_err(|e| format!("invalid label: {e}"))?;
        let Some(namespace) = key.prefix() else {
            return Ok(NodeLabelKey(key));
        };
        let within = |ns: &str, parent: &str| ns == parent || ns.ends_with(&format!(".{parent}"));
        let restricted = within(namespace, "kubernetes.io") || within(namespace, "k8s.io");
        if !restricted
            || KUBELET_LABELS.contains(&s)
            || KUBELET_NAMESPACES.iter().any(|n| within(namespace, n))
        {
            Ok(NodeLabelKey(key))
        } else {
            Err(format!(
                "the kubelet may not set {s:?}: labels in the kubernetes.io and k8s.io namespaces are limited to kubelet.kubernetes.io/*, node.kubernetes.io/* and a few well-known ones (node roles like node-role.kubernetes.io/* are set through the API, not by the kubelet)"
            ))
        }
    }
}
string_value!(NodeLabelKey, "a label key like \"example.com/tier\"");

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A node taint: `key=value:Effect` or `key:Effect`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: LabelKey,
    pub value: Option<LabelValue>,
    pub effect: TaintEffect,
}

impl FromStr for Taint {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid taint {text:?}: {why}; expected \"key=value:Effect\" or \"key:Effect\" with Effect NoSchedule, PreferNoSchedule or NoExecute"
            )
        };
        let (kv, effect) = text.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            _ => return Err(bad(&format!("unknown effect {effect:?}"))),
        };
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (kv, None),
        };
        let key = key.parse().map_err(|e: String| bad(&e))?;
        let value = value
            .map(str::parse)
            .transpose()
            .map_err(|e: String| bad(&e))?;
        Ok(Taint { key, value, effect })
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}:{}", self.key, self.effect.as_str()),
            None => write!(f, "{}:{}", self.key, self.effect.as_str()),
        }
    }
}
string_value!(Taint, "a taint like \"dedicated=infra:NoSchedule\"");

/// A Kubernetes release, `MAJOR.MINOR.PATCH` with an optional pre-release (`1.31.4`,
/// `1.32.0-rc.1`); a leading `v` is accepted. It becomes the control-plane images' tag,
/// `v<version>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KubeVersion(semver::Version);

impl KubeVersion {
    pub fn new(major: u64, minor: u64, patch: u64) -> Self {
        KubeVersion(semver::Version::new(major, minor, patch))
    }

    pub fn semver(&self) -> &semver::Version {
        &self.0
    }

    /// The image tag: `v1.31.4`.
    pub fn tag(&self) -> String {
        format!("v{}", self.0)
    }
}

impl FromStr for KubeVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: semver::Version = s.strip_prefix('v').unwrap_or(s).parse().map_err(|e| {
            format!("invalid Kubernetes version {s:?}: expected a release like \"1.31.4\" ({e})")
        })?;
        if v.build.is_empty() {
            Ok(KubeVersion(v))
        } else {
            Err(format!(
                "invalid Kubernetes version {s:?}: build metadata (+...) is not part of a release tag"
            ))
        }
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_value!(KubeVersion, "a Kubernetes version like \"1.31.4\"");

/// `https://HOST[:PORT]` with an optional trailing `/`: HOST a DNS name or an IP address
/// (IPv6 in brackets). The one parser behind [`super::Endpoint`] and [`PeerUrl`].
pub(crate) fn parse_https(s: &str, default_port: u16) -> Result<(String, u16), &'static str> {
    let rest = s
        .strip_prefix("https://")
        .ok_or("the scheme must be https")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err("no path is allowed");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed '['")?;
        let port = after.strip_prefix(':').map(str::parse::<u16>).transpose();
        (
            h.to_owned(),
            port.map_err(|_| "bad port")?.unwrap_or(default_port),
        )
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| "bad port")?),
            None => (rest.to_owned(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return Err("missing host or port");
    }
    if host.parse::<IpAddr>().is_err() && host.parse::<Hostname>().is_err() {
        return Err("bad host");
    }
    Ok((host, port))
}

/// `https://HOST:PORT` as a URL (IPv6 hosts in brackets).
pub(crate) fn https_url(f: &mut fmt::Formatter<'_>, host: &str, port: u16) -> fmt::Result {
    if host.contains(':') {
        write!(f, "https://[{host}]:{port}")
    } else {
        write!(f, "https://{host}:{port}")
    }
}

/// An etcd member's peer URL: `https://HOST:PORT` (the peer port requires TLS; the port
/// defaults to 2380).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerUrl {
    pub host: String,
    pub port: u16,
}

/// etcd's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;

impl FromStr for PeerUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = parse_https(s, ETCD_PEER_PORT).map_err(|why| {
            format!(
                "invalid peer URL {s:?}: {why}; expected \"https://HOST:2380\" (the peer port requires TLS)"
            )
        })?;
        Ok(PeerUrl { host, port })
    }
}

impl fmt::Display for PeerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        https_url(f, &self.host, self.port)
    }
}
string_value!(PeerUrl, "a peer URL like \"https://10.0.0.1:2380\"");

/// A name for the API server's certificate: an IP address, or a DNS name (any case, kept in
/// lower case) that may start with a `*.` wildcard label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectAltName {
    Ip(IpAddr),
    Dns(String),
}

impl FromStr for SubjectAltName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse() {
            return Ok(SubjectAltName::Ip(ip));
        }
        let (wildcard, host) = match s.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", s),
        };
        match host.parse::<Hostname>() {
            Ok(h) => Ok(SubjectAltName::Dns(format!("{wildcard}{h}"))),
            Err(_) => Err(format!(
                "invalid name {s:?} for a certificate: expected an IP address or a DNS name like \"cp.example.com\" or \"*.example.com\""
            )),
        }
    }
}

impl fmt::Display for SubjectAltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectAltName::Ip(ip) => ip.fmt(f),
            SubjectAltName::Dns(name) => f.write_str(name),
        }
    }
}
string_value!(SubjectAltName, "an IP address or a DNS name");

/// Where the control-plane images come from: a registry host (a DNS name or IP address,
/// with an optional port) and an optional path of lower-case components
/// (`registry.k8s.io`, `registry.example:5000/k8s`). Kept without a trailing `/`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ImageRepository(String);
checked_string!(ImageRepository);

impl ImageRepository {
    /// The default, Kubernetes' own registry.
    pub fn registry_k8s_io() -> Self {
        ImageRepository("registry.k8s.io".to_owned())
    }
}

impl FromStr for ImageRepository {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid image repository {s:?}: {why}; expected a registry and path like \"registry.k8s.io\" or \"registry.example:5000/k8s\""
            )
        };
        let trimmed = s.strip_suffix('/').unwrap_or(s);
        let mut parts = trimmed.split('/');
        let registry = parts.next().unwrap_or_default();
        let (host, port) = match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        };
        if host.parse::<IpAddr>().is_err() && host.parse::<DnsSubdomain>().is_err() {
            return Err(bad(&format!("{registry:?} is not a registry host")));
        }
        if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
            return Err(bad("bad port"));
        }
        // A path component: lower-case letters and digits, separated by `.`, `_`, `__` or
        // `-` runs (the distribution spec's grammar).
        let component_ok = |c: &str| {
            let alnum =
                |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            alnum(c.bytes().next())
                && alnum(c.bytes().last())
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        if let Some(bad_part) = parts.find(|c| !component_ok(c)) {
            return Err(bad(&format!("path component {bad_part:?}")));
        }
        Ok(ImageRepository(trimmed.to_owned()))
    }
}
string_value!(
    ImageRepository,
    "an image repository like \"registry.k8s.io\""
);

#[cfg(test)]
mod tests;
