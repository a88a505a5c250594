//! Just enough PKI for the fake kubelet: base64, PEM, a DER walk of an X.509 certificate's
//! names and validity (no signature checks), and kubeconfigs.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::yaml;

/// Standard base64 with optional padding; whitespace ignored.
pub fn base64(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|b| !b.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("invalid base64 character {:?}", c as char)),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// The DER of every `CERTIFICATE` block in a PEM text.
pub fn pem_certificates(text: &str) -> Vec<Vec<u8>> {
    pem_blocks(text, "CERTIFICATE")
}

fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let body = &rest[start + begin.len()..];
        let Some(stop) = body.find(&end) else { break };
        if let Ok(der) = base64(&body[..stop]) {
            blocks.push(der);
        }
        rest = &body[stop + end.len()..];
    }
    blocks
}

/// Whether a PEM text holds a private key (PKCS#8, EC or RSA).
pub fn has_private_key(text: &str) -> bool {
    text.contains("-----BEGIN PRIVATE KEY-----")
        || text.contains("-----BEGIN EC PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----")
}

/// One DER element: tag, contents, and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
    raw: &'a [u8],
}

/// The first element of `data` and what follows it.
fn tlv(data: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let short = || "truncated DER".to_owned();
    let tag = *data.first().ok_or_else(short)?;
    let first = *data.get(1).ok_or_else(short)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err("unsupported DER length".into());
        }
        let bytes = data.get(2..2 + n).ok_or_else(short)?;
        (
            bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
            2 + n,
        )
    };
    let end = header + len;
    let body = data.get(header..end).ok_or_else(short)?;
    Ok((
        Tlv {
            tag,
            body,
            raw: &data[..end],
        },
        &data[end..],
    ))
}

/// What the fake reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub common_names: Vec<String>,
    pub organizations: Vec<String>,
    /// The encoded issuer and subject names, compared byte for byte.
    pub issuer: Vec<u8>,
    pub subject: Vec<u8>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
}

impl Certificate {
    pub fn common_name(&self) -> String {
        self.common_names.join("+")
    }
}

const SEQUENCE: u8 = 0x30;
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// Walks Certificate -> TBSCertificate -> [version], serial, signature, issuer, validity,
/// subject (RFC 5280 §4.1).
pub fn parse_certificate(der: &[u8]) -> Result<Certificate, String> {
    let (cert, _) = tlv(der)?;
    let (tbs, _) = tlv(cert.body)?;
    if cert.tag != SEQUENCE || tbs.tag != SEQUENCE {
        return Err("not an X.509 certificate".into());
    }
    let (mut field, mut rest) = tlv(tbs.body)?;
    if field.tag == 0xa0 {
        (field, rest) = tlv(rest)?; // the serial number after the version
    }
    if field.tag != 0x02 {
        return Err("not an X.509 certificate (no serial number)".into());
    }
    let (_signature, rest) = tlv(rest)?;
    let (issuer, rest) = tlv(rest)?;
    let (validity, rest) = tlv(rest)?;
    let (subject, _) = tlv(rest)?;
    let (not_before, after) = tlv(validity.body)?;
    let (not_after, _) = tlv(after)?;
    let mut cert = Certificate {
        common_names: Vec::new(),
        organizations: Vec::new(),
        issuer: issuer.raw.to_vec(),
        subject: subject.raw.to_vec(),
        not_before: time(&not_before)?,
        not_after: time(&not_after)?,
    };
    // Name: SEQUENCE OF SET OF SEQUENCE { type OID, value string }.
    let mut sets = subject.body;
    while !sets.is_empty() {
        let (set, next) = tlv(sets)?;
        sets = next;
        let mut attrs = set.body;
        while !attrs.is_empty() {
            let (attr, next) = tlv(attrs)?;
            attrs = next;
            let (oid, value) = tlv(attr.body)?;
            let (value, _) = tlv(value)?;
            let text = String::from_utf8_lossy(value.body).into_owned();
            match oid.body {
                OID_CN => cert.common_names.push(text),
                OID_O => cert.organizations.push(text),
                _ => {}
            }
        }
    }
    Ok(cert)
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(t: &Tlv<'_>) -> Result<i64, String> {
    let text = std::str::from_utf8(t.body).map_err(|_| "bad certificate time")?;
    let digits = text
        .strip_suffix('Z')
        .ok_or("certificate time not in UTC")?;
    let num = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| format!("bad certificate time {text:?}"))
    };
    let (year, rest) = match (t.tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(&digits[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (num(&digits[..4])?, &digits[4..]),
        _ => return Err(format!("unsupported certificate time {text:?}")),
    };
    let field = |i: usize| num(&rest[i..i + 2]);
    let days = days_from_civil(year, field(0)?, field(2)?);
    Ok(days * 86400 + field(4)? * 3600 + field(6)? * 60 + field(8)?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The parts of a kubeconfig the kubelet uses: the current context's cluster and user.
pub struct Kubeconfig {
    pub path: PathBuf,
    pub server: String,
    pub ca: Certificate,
    user: Value,
}

impl Kubeconfig {
    /// Reads JSON, or YAML in the block style kubeconfigs are written in.
    pub fn load(path: &Path) -> Result<Kubeconfig, String> {
        let bad = |why: String| format!("kubeconfig {}: {why}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let doc: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => yaml::parse(&text).map_err(|e| bad(format!("neither JSON nor YAML: {e}")))?,
        };
        let named = |list: &str, name: &str, inner: &str| -> Result<Value, String> {
            doc.get(list)
                .and_then(Value::as_array)
                .and_then(|l| l.iter().find(|e| e["name"] == name))
                .and_then(|e| e.get(inner))
                .cloned()
                .ok_or_else(|| bad(format!("no {inner} named {name:?} in {list}")))
        };
        let context_name = match doc.get("current-context").and_then(Value::as_str) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match doc.get("contexts").and_then(Value::as_array) {
                Some(list) if list.len() == 1 => list[0]["name"].as_str().unwrap_or("").to_owned(),
                _ => return Err(bad("no current-context".into())),
            },
        };
        let context = named("contexts", &context_name, "context")?;
        let cluster = named(
            "clusters",
            context["cluster"].as_str().unwrap_or(""),
            "cluster",
        )?;
        let user = named("users", context["user"].as_str().unwrap_or(""), "user")?;
        let server = cluster["server"].as_str().unwrap_or("").to_owned();
        if !server.starts_with("https://") || server.len() <= "https://".len() {
            return Err(bad(format!("the server {server:?} is not an https URL")));
        }
        if cluster["insecure-skip-tls-verify"] == true {
            return Err(bad("insecure-skip-tls-verify is set".into()));
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let ca_pem = inline_or_file(&cluster, "certificate-authority", dir)
            .map_err(bad)?
            .ok_or_else(|| bad("the cluster has no certificate-authority(-data)".into()))?;
        let ca_der = pem_certificates(&ca_pem)
            .into_iter()
            .next()
            .ok_or_else(|| bad("the CA data holds no PEM certificate".into()))?;
        let ca = parse_certificate(&ca_der).map_err(|e| bad(format!("CA: {e}")))?;
        Ok(Kubeconfig {
            path: path.to_owned(),
            server,
            ca,
            user,
        })
    }

    /// The user's client certificate, checked: valid at `now`, issued by the cluster CA
    /// (by name), with a key beside it, and when `node` is given, `CN=<node>` in group
    /// `system:nodes` (what the Node authorizer requires of a kubelet).
    pub fn client_certificate(&self, now: i64, node: Option<&str>) -> Result<Certificate, String> {
        let bad = |why: String| format!("kubeconfig {}: {why}", self.path.display());
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let pem = inline_or_file(&self.user, "client-certificate", dir)
            .map_err(bad)?
            .ok_or_else(|| bad("the user has no client-certificate(-data)".into()))?;
        let der = pem_certificates(&pem)
            .into_iter()
            .next()
            .ok_or_else(|| bad("the client certificate data holds no PEM certificate".into()))?;
        let cert = parse_certificate(&der).map_err(|e| bad(format!("client certificate: {e}")))?;
        let key = inline_or_file(&self.user, "client-key", dir).map_err(bad)?;
        if !key.is_some_and(|k| has_private_key(&k)) {
            return Err(bad(
                "the user has no client-key(-data) with a PEM private key".into(),
            ));
        }
        if now < cert.not_before || now >= cert.not_after {
            return Err(bad(format!(
                "the client certificate (CN={}) is not valid now (valid from {} to {}, epoch seconds)",
                cert.common_name(),
                cert.not_before,
                cert.not_after
            )));
        }
        if cert.issuer != self.ca.subject {
            return Err(bad(format!(
                "the client certificate (CN={}) was not issued by the kubeconfig's CA (CN={})",
                cert.common_name(),
                self.ca.common_name()
            )));
        }
        if let Some(node) = node {
            if cert.common_names != [node] {
                return Err(bad(format!(
                    "the client certificate is for CN={}, not {node}",
                    cert.common_name()
                )));
            }
            if !cert.organizations.iter().any(|o| o == "system:nodes") {
                return Err(bad(format!(
                    "the client certificate (CN={}) is not in group system:nodes (O={})",
                    cert.common_name(),
                    cert.organizations.join("+")
                )));
            }
        }
        Ok(cert)
    }

    /// A bootstrap kubeconfig's credential: a bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`)
    /// or a client certificate.
    pub fn bootstrap_credential(&self, now: i64) -> Result<String, String> {
        if let Some(token) = self.user.get("token").and_then(Value::as_str) {
            let part = |s: &str, n: usize| {
                s.len() == n
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            };
            return match token.split_once('.') {
                Some((id, secret)) if part(id, 6) && part(secret, 16) => {
                    Ok(format!("bootstrap token {id}.<secret>"))
                }
                _ => Err(format!(
                    "kubeconfig {}: the token is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})",
                    self.path.display()
                )),
            };
        }
        let cert = self.client_certificate(now, None)?;
        Ok(format!("client certificate CN={}", cert.common_name()))
    }
}

/// `<field>-data` (base64 of PEM) or `<field>` (a file, relative to the kubeconfig).
fn inline_or_file(v: &Value, field: &str, dir: &Path) -> Result<Option<String>, String> {
    if let Some(data) = v.get(format!("{field}-data")).and_then(Value::as_str) {
        let bytes = base64(data).map_err(|e| format!("{field}-data: {e}"))?;
        return String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("{field}-data is not PEM text"));
    }
    match v.get(field).and_then(Value::as_str) {
        Some(file) => {
            let path = dir.join(file);
            std::fs::read_to_string(&path)
                .map(Some)
                .map_err(|e| format!("{field} {}: {e}", path.display()))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGVs\nbG8").unwrap(), b"hello");
        assert!(base64("a*b").is_err());
    }

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2126, 11, 4), 57_285);
    }

    fn fixture(name: &str) -> Certificate {
        let path = format!(
            "{}/tests/fixtures/fake-kubelet/{name}.crt",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        parse_certificate(&pem_certificates(&text)[0]).unwrap()
    }

    #[test]
    fn certificate_names_and_times() {
        let ca = fixture("ca");
        assert_eq!(ca.common_names, ["kubernetes"]);
        assert_eq!(ca.issuer, ca.subject, "self-signed");
        let node = fixture("node-cp-1");
        assert_eq!(node.common_names, ["system:node:cp-1"]);
        assert_eq!(node.organizations, ["system:nodes"]);
        assert_eq!(node.issuer, ca.subject);
        // GeneralizedTimes (after 2049): valid until 2125.
        assert_eq!(node.not_before, 946_684_800);
        assert_eq!(node.not_after, days_from_civil(2125, 1, 1) * 86400);
        // UTCTimes.
        let expired = fixture("expired");
        assert_eq!(expired.not_before, 946_684_800);
        assert_eq!(expired.not_after, 978_307_200);
        assert_eq!(expired.common_names, ["system:node:cp-1"]);
        assert_ne!(fixture("foreign").issuer, ca.subject);
        // A v1 certificate: no version field before the serial number.
        let v1 = fixture("no-group");
        assert!(v1.organizations.is_empty());
        assert_eq!(v1.common_names, ["system:node:cp-1"]);
        assert_eq!(v1.issuer, ca.subject);
    }

    #[test]
    fn truncated_der_is_an_error() {
        assert!(parse_certificate(&[0x30, 0x82, 0x01]).is_err());
        assert!(parse_certificate(&[]).is_err());
    }
}
