//! `http://host[:port]/path` (and `https://`), with IPv6 literals in brackets.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A URL that is not one Keel can fetch, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

/// An absolute `http` or `https` URL. The host is kept without brackets (`fd00::1`), so
/// that `(host, port)` resolves as is; the brackets come back where a URL or a Host header
/// needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    scheme: Scheme,
    host: String,
    port: u16,
    target: String,
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, UrlError> {
        let bad = |why: &str| UrlError {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected http://HOST[:PORT]/PATH"))?;
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        // The fragment never goes on the wire.
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        if authority.contains('@') {
            return Err(bad("user names in URLs are not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (inner, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address without its closing ']'"))?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
                ),
            };
            (ip.to_string(), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if port.is_some_and(|p| p.contains(':')) {
                return Err(bad(
                    "an IPv6 address must be in brackets: http://[ADDRESS]/",
                ));
            }
            if !host_ok(host) {
                return Err(bad("expected a host name or address"));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            // `host:` is the default port (RFC 3986 allows an empty port).
            None | Some("") => scheme.default_port(),
            Some(p) => Some(p)
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("expected a port number from 1 to 65535"))?,
        };
        Ok(Url {
            scheme,
            host,
            port,
            target,
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host name or address, IPv6 without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path and query (origin form), what goes on the request line.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// `host`, `host:port` or `[v6]:port`: the Host header (the port only when not the
    /// scheme's default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The addresses to connect to (a name is resolved; an address is itself).
    pub fn socket_addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority(),
            self.target
        )
    }
}

impl std::str::FromStr for Url {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Url, UrlError> {
        Url::parse(s)
    }
}
