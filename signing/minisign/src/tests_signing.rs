//! Tests that need the `secret-keys` feature: key pairs made here, signing, and the
//! verification outcomes of signatures we make.

use std::io::{self, Read};

use super::tests::{KAT_LEGACY_SIGNATURE, KAT_PAYLOAD, KAT_PUBLIC, KAT_SECRET, KAT_SIGNATURE};
use super::tests::{decode_line, replace_line};
use super::*;

pub(super) fn test_key(n: u8) -> SecretKey {
    SecretKey::from_seed(KeyId([n, 1, 2, 3, 4, 5, 6, 7]), &[n; 32])
}

#[test]
fn public_key_layout() {
    let key = test_key(9).public_key();
    let text = key.to_file_string("my comment").unwrap();
    assert!(text.starts_with("untrusted comment: my comment\n"));
    let blob = decode_line(&text, 1);
    assert_eq!(blob.len(), 42);
    assert_eq!(&blob[..2], b"Ed");
    assert_eq!(&blob[2..10], key.key_id().as_bytes());
    assert_eq!(&blob[10..], key.verifying_key().as_bytes());
}

#[test]
fn trusted_keys_hold_several_keys() {
    let a = test_key(1).public_key();
    let b = test_key(2).public_key();
    let text = format!(
        "{}\n\n{}{}",
        a.to_file_string("first").unwrap(),
        b.to_file_string("second").unwrap(),
        a.to_file_string("first again").unwrap(),
    );
    let keys = TrustedKeys::parse(&text).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.key_ids(), vec![a.key_id(), b.key_id()]);
    assert!(keys.contains(a.key_id()) && keys.contains(b.key_id()));
    assert!(!keys.contains(test_key(3).key_id()));
    assert_eq!(keys.iter().count(), 2);
    assert_eq!(TrustedKeys::parse(&keys.to_file_string()).unwrap(), keys);

    assert!(matches!(
        TrustedKeys::parse("\n\n"),
        Err(FormatError::NoKeys)
    ));

    // Same id, different key: ambiguous, refused.
    let impostor = SecretKey::from_seed(a.key_id(), &[42; 32]).public_key();
    let text = format!(
        "{}{}",
        a.to_file_string("a").unwrap(),
        impostor.to_file_string("b").unwrap()
    );
    let err = TrustedKeys::parse(&text).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::DuplicateKeyId {
                lines: Some((1, 3)),
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        TrustedKeys::new([a.clone(), impostor]),
        Err(FormatError::DuplicateKeyId { lines: None, .. })
    ));
    // A block cut short in the middle of the file.
    let text = format!(
        "{}untrusted comment: dangling\n",
        b.to_file_string("b").unwrap()
    );
    let err = TrustedKeys::parse(&text).unwrap_err();
    assert!(
        matches!(err, FormatError::Truncated { line: 4, .. }),
        "{err}"
    );
}

#[test]
fn signature_verifies_under_matching_key_of_set() {
    let (k1, k2, k3) = (test_key(1), test_key(2), test_key(3));
    let keys = TrustedKeys::new([k1.public_key(), k2.public_key()]).unwrap();
    for k in [&k1, &k2] {
        let sig = sign_bytes(k, b"payload", "rotation").unwrap();
        let ok = verify_bytes(&keys, &sig, b"payload").unwrap();
        assert_eq!(ok.key_id, k.key_id());
    }
    let sig = sign_bytes(&k3, b"payload", "rotation").unwrap();
    match verify_bytes(&keys, &sig, b"payload").unwrap_err() {
        VerifyError::UnknownKey {
            signature_key_id,
            trusted,
        } => {
            assert_eq!(signature_key_id, k3.key_id());
            assert_eq!(trusted, vec![k1.key_id(), k2.key_id()]);
        }
        other => panic!("{other}"),
    }
    let message = verify_bytes(&keys, &sig, b"payload")
        .unwrap_err()
        .to_string();
    for id in [k1.key_id(), k2.key_id(), k3.key_id()] {
        assert!(message.contains(&id.to_string()), "{message}");
    }
}

#[test]
fn signs_exactly_like_minisign() {
    // Ed25519 is deterministic, so signing the same data with the same key and trusted
    // comment must reproduce minisign's file byte for byte.
    let secret = SecretKey::parse(KAT_SECRET, None).unwrap();
    assert_eq!(secret.public_key(), PublicKey::parse(KAT_PUBLIC).unwrap());
    let sig = sign_bytes(&secret, KAT_PAYLOAD, "keel kat prehashed").unwrap();
    assert_eq!(sig.to_file_string(), KAT_SIGNATURE);
    let legacy = secret::sign_message(&secret, KAT_PAYLOAD, false, "keel kat legacy").unwrap();
    let mut legacy = legacy;
    legacy.set_untrusted_comment("legacy sig").unwrap();
    assert_eq!(legacy.to_file_string(), KAT_LEGACY_SIGNATURE);
}

#[test]
fn signature_layout() {
    let key = test_key(5);
    let sig = sign_bytes(&key, b"x", "hello world").unwrap();
    let text = sig.to_file_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(text.ends_with('\n'));
    assert_eq!(
        lines[0],
        "untrusted comment: signature from minisign secret key"
    );
    assert_eq!(lines[2], "trusted comment: hello world");
    let blob = decode_line(&text, 1);
    assert_eq!(blob.len(), 74);
    assert_eq!(&blob[..2], b"ED");
    assert_eq!(&blob[2..10], key.key_id().as_bytes());
    assert_eq!(decode_line(&text, 3).len(), 64);
    assert_eq!(SignatureFile::parse(&text).unwrap(), sig);
}

/// Hands out data a few bytes at a time, with an interruption, like a slow pipe.
struct Trickle<'a> {
    data: &'a [u8],
    interrupted: bool,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.data.len()).min(7);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn streaming_matches_in_memory() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let key = test_key(4);
    let keys = TrustedKeys::from(key.public_key());
    let from_reader = sign(
        &key,
        Trickle {
            data: &data,
            interrupted: false,
        },
        "stream",
    )
    .unwrap();
    let from_bytes = sign_bytes(&key, &data, "stream").unwrap();
    assert_eq!(from_reader, from_bytes);
    let chained = data[..1000].chain(&data[1000..]);
    verify(&keys, &from_reader, chained).unwrap();
    verify_bytes(&keys, &from_reader, &data).unwrap();
    let mut short = data.clone();
    short.pop();
    assert!(matches!(
        verify(&keys, &from_reader, short.as_slice()),
        Err(VerifyError::BadSignature { .. })
    ));

    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("disk on fire"))
        }
    }
    let err = verify(&keys, &from_reader, Broken).unwrap_err();
    assert!(matches!(err, VerifyError::Read { .. }), "{err}");
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert!(matches!(
        sign(&key, Broken, "x"),
        Err(SignError::Read { .. })
    ));
}

#[test]
fn verification_errors_are_distinct() {
    let key = test_key(6);
    let keys = TrustedKeys::from(key.public_key());
    let sig = sign_bytes(&key, b"original", "release 1.0").unwrap();
    let text = sig.to_file_string();

    assert!(matches!(
        verify_bytes(&keys, &sig, b"altered!"),
        Err(VerifyError::BadSignature { .. })
    ));

    let altered =
        SignatureFile::parse(&replace_line(&text, 2, "trusted comment: release 9.9")).unwrap();
    let err = verify_bytes(&keys, &altered, b"original").unwrap_err();
    assert!(
        matches!(err, VerifyError::TrustedCommentAltered { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("trusted comment"), "{err}");

    let other = TrustedKeys::from(test_key(7).public_key());
    let err = verify_bytes(&other, &sig, b"original").unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");

    // The untrusted comment is not signed, by design.
    let relabelled =
        SignatureFile::parse(&replace_line(&text, 0, "untrusted comment: anything")).unwrap();
    verify_bytes(&keys, &relabelled, b"original").unwrap();
}

#[test]
fn comments_are_checked_when_signing() {
    let key = test_key(1);
    for bad in ["a\nb", "a\rb", "a\0b"] {
        let err = sign_bytes(&key, b"d", bad).unwrap_err();
        assert!(
            matches!(
                err,
                SignError::Format(FormatError::InvalidComment {
                    problem: CommentProblem::ForbiddenCharacter(_),
                    ..
                })
            ),
            "{err}"
        );
    }
    let longest = "x".repeat(8173);
    let sig = sign_bytes(&key, b"d", &longest).unwrap();
    assert_eq!(SignatureFile::parse(&sig.to_file_string()).unwrap(), sig);
    let err = sign_bytes(&key, b"d", &format!("{longest}x")).unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Format(FormatError::InvalidComment {
                problem: CommentProblem::TooLong {
                    len: 8174,
                    max: 8173
                },
                ..
            })
        ),
        "{err}"
    );
    let mut sig = sig;
    assert!(sig.set_untrusted_comment(&"u".repeat(1004)).is_err());
    sig.set_untrusted_comment(&"u".repeat(1003)).unwrap();
    // An empty trusted comment is legitimate and still signed.
    let sig = sign_bytes(&key, b"d", "").unwrap();
    assert!(sig.to_file_string().contains("\ntrusted comment: \n"));
    verify_bytes(&TrustedKeys::from(key.public_key()), &sig, b"d").unwrap();
}
