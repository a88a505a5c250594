//! PEM blocks (RFC 7468), as the secrets files hold every certificate and key.

use std::fmt;

use base64::Engine;

/// One PEM block: its label (`CERTIFICATE`, `PRIVATE KEY`, ...) and decoded contents.
#[derive(Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

impl fmt::Debug for PemBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemBlock({}, {} bytes)", self.label, self.der.len())
    }
}

/// Every PEM block in `text`, in order (RFC 7468 strict-ish: BEGIN and END labels must match,
/// the body must be base64). Text between blocks is ignored, as OpenSSL does.
pub fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.starts_with("-----") {
                return Err(format!("{label} block ends with {line:?}"));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(format!("{label} block has no END line"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("{label} block is not base64 ({e})"))?;
        if der.is_empty() {
            return Err(format!("{label} block is empty"));
        }
        blocks.push(PemBlock {
            label: label.to_owned(),
            der,
        });
    }
    Ok(blocks)
}

/// Checks that `text` is exactly one PEM block labelled `label`.
pub(super) fn check_pem(text: &str, label: &str) -> Result<(), String> {
    let blocks = pem_blocks(text)?;
    match blocks.as_slice() {
        [one] if one.label == label => Ok(()),
        [one] => Err(format!("is a {} block", one.label)),
        [] => Err("holds no PEM block".into()),
        more => Err(format!("holds {} PEM blocks", more.len())),
    }
}
