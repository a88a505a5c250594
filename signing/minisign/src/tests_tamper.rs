//! Tamper tests: every change to a signature file, the signed data or a public key must be
//! refused. Each test also counts which defence caught the change, so that a parser which
//! refused everything for one wrong reason would not pass unnoticed.

use std::collections::BTreeMap;

use super::tests_signing::test_key;
use super::*;

/// About 200 bytes, as the image manifests this protects are small.
fn payload() -> Vec<u8> {
    (0..200u32).map(|i| (i * 37 % 256) as u8 ^ 0x5a).collect()
}

#[derive(Debug)]
enum Outcome {
    NotText,
    Parse(FormatError),
    Verify(VerifyError),
    Accepted(Verified),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::NotText => "not UTF-8",
            Outcome::Parse(FormatError::MissingPrefix { .. }) => "missing prefix",
            Outcome::Parse(FormatError::Base64 { .. }) => "base64",
            Outcome::Parse(FormatError::UnsupportedAlgorithm { .. }) => "algorithm",
            Outcome::Parse(FormatError::InvalidComment { .. }) => "comment",
            Outcome::Parse(FormatError::InvalidPublicKey { .. }) => "invalid public key",
            Outcome::Parse(_) => "other format error",
            Outcome::Verify(VerifyError::UnknownKey { .. }) => "unknown key",
            Outcome::Verify(VerifyError::BadSignature { .. }) => "bad signature",
            Outcome::Verify(VerifyError::TrustedCommentAltered { .. }) => "comment altered",
            Outcome::Verify(_) => "other verify error",
            Outcome::Accepted(_) => "accepted",
        }
    }
}

fn check(keys: &TrustedKeys, sig_file: &[u8], data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(sig_file) else {
        return Outcome::NotText;
    };
    let sig = match SignatureFile::parse(text) {
        Ok(sig) => sig,
        Err(e) => return Outcome::Parse(e),
    };
    // Both entry points, since they hash differently (streamed and in one go).
    let streamed = verify(keys, &sig, data);
    let in_memory = verify_bytes(keys, &sig, data);
    assert_eq!(
        streamed.as_ref().ok(),
        in_memory.as_ref().ok(),
        "streaming and in-memory verification disagree"
    );
    match streamed {
        Ok(v) => Outcome::Accepted(v),
        Err(e) => Outcome::Verify(e),
    }
}

/// Every single-bit flip of `byte`, plus the characters that mean something to a line or
/// base64 parser. (Trying every printable character as well took seconds and caught nothing
/// more.)
fn replacements(byte: u8) -> impl Iterator<Item = u8> {
    let flips = (0..8).map(move |bit| byte ^ (1 << bit));
    let special = *b"\n\r\t\0 =+/Aa0:";
    let mut all: Vec<u8> = flips.chain(special).filter(|&b| b != byte).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
}

fn signed_fixture(untrusted_comment: &str) -> (TrustedKeys, Vec<u8>, Vec<u8>) {
    let key = test_key(11);
    let keys = TrustedKeys::from(key.public_key());
    let data = payload();
    let mut sig = sign_bytes(&key, &data, "timestamp:1700000000\tfile:manifest.json").unwrap();
    sig.set_untrusted_comment(untrusted_comment).unwrap();
    (keys, sig.to_file_string().into_bytes(), data)
}

#[test]
fn every_byte_of_the_signature_file_is_protected() {
    // With an empty untrusted comment every byte of the file is either structure, signed, or
    // a signature, so every change must be refused.
    let (keys, file, data) = signed_fixture("");
    assert_eq!(file.iter().filter(|&&b| b == b'\n').count(), 4);
    assert!(matches!(check(&keys, &file, &data), Outcome::Accepted(_)));

    let mut caught: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..file.len() {
        for new in replacements(file[i]) {
            let mut tampered = file.clone();
            tampered[i] = new;
            let outcome = check(&keys, &tampered, &data);
            if let Outcome::Accepted(v) = &outcome {
                panic!(
                    "byte {i} changed from {:?} to {new:?} was accepted: {v:?}",
                    file[i]
                );
            }
            *caught.entry(outcome.label()).or_default() += 1;
        }
    }
    for defence in [
        "missing prefix",
        "base64",
        "algorithm",
        "unknown key",
        "bad signature",
        "comment altered",
        "comment",
    ] {
        assert!(
            caught.get(defence).copied().unwrap_or(0) > 0,
            "{defence}: {caught:?}"
        );
    }
}

#[test]
fn only_the_untrusted_comment_text_is_unauthenticated() {
    // minisign's first line is deliberately unsigned. Changing its text must not change what
    // verification reports, and nothing outside it may be changed.
    let comment = "signature from minisign secret key";
    let (keys, file, data) = signed_fixture(comment);
    let Outcome::Accepted(expected) = check(&keys, &file, &data) else {
        panic!("fixture does not verify");
    };
    let free = "untrusted comment: ".len().."untrusted comment: ".len() + comment.len();
    let mut accepted = 0;
    for i in 0..file.len() {
        for new in replacements(file[i]) {
            let mut tampered = file.clone();
            tampered[i] = new;
            match check(&keys, &tampered, &data) {
                Outcome::Accepted(v) => {
                    assert!(
                        free.contains(&i),
                        "byte {i} changed to {new:?} was accepted"
                    );
                    assert_eq!(v, expected);
                    accepted += 1;
                }
                _ => assert!(
                    !free.contains(&i) || matches!(new, b'\n' | b'\r' | 0 | 0x80..),
                    "byte {i} of the untrusted comment changed to {new:?} was refused"
                ),
            }
        }
    }
    assert!(accepted > 0);
}

#[test]
fn every_bit_of_the_payload_is_protected() {
    let (keys, file, data) = signed_fixture("");
    assert!(data.len() >= 200);
    for i in 0..data.len() {
        for bit in 0..8 {
            let mut tampered = data.clone();
            tampered[i] ^= 1 << bit;
            match check(&keys, &file, &tampered) {
                Outcome::Verify(VerifyError::BadSignature { .. }) => {}
                other => panic!("payload byte {i} bit {bit}: {other:?}"),
            }
        }
    }
    // Appending or dropping a byte is a change too.
    let mut longer = data.clone();
    longer.push(0);
    assert!(matches!(
        check(&keys, &file, &longer),
        Outcome::Verify(VerifyError::BadSignature { .. })
    ));
    assert!(matches!(
        check(&keys, &file, &data[..data.len() - 1]),
        Outcome::Verify(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn every_bit_of_the_public_key_is_protected() {
    let key = test_key(12);
    let data = payload();
    let sig = sign_bytes(&key, &data, "pk flip").unwrap();
    let original = key.public_key().to_bytes();
    let mut caught: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..original.len() {
        for bit in 0..8 {
            let mut bytes = original;
            bytes[i] ^= 1 << bit;
            let text = format!("untrusted comment: flipped\n{}\n", text::encode(&bytes));
            let outcome = match TrustedKeys::parse(&text) {
                Err(e) => Outcome::Parse(e),
                Ok(keys) => match verify_bytes(&keys, &sig, &data) {
                    Ok(v) => Outcome::Accepted(v),
                    Err(e) => Outcome::Verify(e),
                },
            };
            if let Outcome::Accepted(_) = outcome {
                panic!("public key byte {i} bit {bit} flipped was accepted");
            }
            *caught.entry(outcome.label()).or_default() += 1;
        }
    }
    assert_eq!(caught.get("algorithm"), Some(&16), "{caught:?}");
    assert_eq!(caught.get("unknown key"), Some(&64), "{caught:?}");
    let key_bits = caught.get("bad signature").copied().unwrap_or(0)
        + caught.get("invalid public key").copied().unwrap_or(0);
    assert_eq!(key_bits, 256, "{caught:?}");
}
