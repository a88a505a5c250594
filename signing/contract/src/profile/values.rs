//! Value types of the profile that validate themselves while they are deserialized, so a bad
//! value is reported by the TOML parser with its line and column.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::names::Hostname;
use crate::names::{ShortName, checked_string, string_value};

/// A size in bytes written with a binary unit: `"512MiB"`, `"1GiB"`, `"128KiB"`, or a plain
/// integer number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub const fn mib(n: u64) -> Self {
        ByteSize(n * Self::MIB)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid size {s:?}: expected a number with a binary unit, like \"512MiB\", \"2GiB\" or \"128KiB\""
            )
        };
        let s_trim = s.trim();
        let split = s_trim
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s_trim.len());
        let (digits, unit) = s_trim.split_at(split);
        let n: u64 = digits.parse().map_err(|_| expected())?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" => Self::KIB,
            "MiB" => Self::MIB,
            "GiB" => Self::GIB,
            "TiB" => Self::GIB * 1024,
            _ => return Err(expected()),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, mult) in [("GiB", Self::GIB), ("MiB", Self::MIB), ("KiB", Self::KIB)] {
            if n >= mult && n.is_multiple_of(mult) {
                return write!(f, "{}{unit}", n / mult);
            }
        }
        write!(f, "{n}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"512MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An image name: a [`ShortName`] (lower-case letters, digits and `-`, starting with a letter,
/// at most 63 bytes): it ends up in file names, partition GUID derivation and os-release.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName(String);
checked_string!(ImageName);

impl ImageName {
    /// The default name.
    pub fn keel() -> Self {
        ImageName("keel".to_owned())
    }
}

impl FromStr for ImageName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<ShortName>()
            .map(|_| ImageName(s.to_owned()))
            .map_err(|e| e.replacen("invalid name", "invalid image name", 1))
    }
}
string_value!(ImageName, "an image name like \"keel-worker\"");

/// A system container's or a baked container image's name: a [`ShortName`].
pub type ContainerName = ShortName;

/// A cluster name: a DNS label (kubeconfigs, the etcd cluster token and the secrets file
/// carry it).
pub type ClusterName = crate::names::DnsLabel;

/// A network interface name as Linux takes it: 1-15 bytes, no `/`, whitespace or `:`, not
/// `.` or `..`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InterfaceName(String);
checked_string!(InterfaceName);

impl FromStr for InterfaceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 15
            && s != "."
            && s != ".."
            && !s
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
        if ok {
            Ok(InterfaceName(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not an interface name: expected 1-15 characters without '/', ':' or spaces, like \"eth0\""
            ))
        }
    }
}
string_value!(InterfaceName, "an interface name like \"eth0\"");

/// An interface address with its prefix length: `"10.0.2.15/24"`, `"fd00::2/64"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "invalid address {s:?}: expected an address with a prefix length, like \"10.0.2.15/24\""
            )
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!(
                "invalid address {s:?}: prefix length {prefix} exceeds {max}"
            ));
        }
        Ok(IpCidr { addr, prefix })
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
string_value!(
    IpCidr,
    "an address with a prefix length like \"10.0.2.15/24\""
);

/// An HTTPS endpoint: `https://host[:port]` (the Kubernetes API endpoint of a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = super::kube::parse_https(s, 443).map_err(|why| {
            format!("invalid endpoint {s:?}: {why}; expected \"https://HOST:PORT\"")
        })?;
        Ok(Endpoint { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::kube::https_url(f, &self.host, self.port)
    }
}
string_value!(Endpoint, "an endpoint like \"https://10.0.0.1:6443\"");

/// A file mode written as an octal string (`"0644"`, `"755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(pub u16);

impl FromStr for FileMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u16::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(FileMode(m)),
            _ => Err(format!(
                "invalid mode {s:?}: expected an octal string like \"0644\""
            )),
        }
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}
string_value!(FileMode, "an octal mode like \"0644\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!("512MiB".parse::<ByteSize>().unwrap(), ByteSize(512 << 20));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!(ByteSize(3 << 30).to_string(), "3GiB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MiB");
        for bad in ["1GB", "MiB", "-1MiB", "1.5GiB", "99999999999999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_hosts() {
        assert!("keel-worker".parse::<ImageName>().is_ok());
        for bad in ["Keel", "1keel", "", "keel_worker", &"a".repeat(64)] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad}");
        }
        assert_eq!(
            "Node-1.Example".parse::<Hostname>().unwrap().as_str(),
            "node-1.example"
        );
        for bad in ["-a", "a-", "a..b", "a_b", ""] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_endpoints_modes() {
        assert_eq!("10.0.2.15/24".parse::<IpCidr>().unwrap().prefix, 24);
        assert!("fd00::1/64".parse::<IpCidr>().is_ok());
        for bad in ["10.0.2.15", "10.0.2.15/33", "x/1"] {
            assert!(bad.parse::<IpCidr>().is_err(), "{bad}");
        }
        let e: Endpoint = "https://10.0.0.1:6443".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("10.0.0.1", 6443));
        assert_eq!("https://cp.example".parse::<Endpoint>().unwrap().port, 443);
        assert_eq!(
            "https://[fd00::1]:6443"
                .parse::<Endpoint>()
                .unwrap()
                .to_string(),
            "https://[fd00::1]:6443"
        );
        for bad in [
            "http://a:1",
            "https://a:b",
            "https://a:1/path",
            "https://:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        assert_eq!("0644".parse::<FileMode>().unwrap(), FileMode(0o644));
        assert!("0899".parse::<FileMode>().is_err());
        assert!("17777".parse::<FileMode>().is_err());
    }
}
