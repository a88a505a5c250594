//! Format and error-case tests. Known-answer vectors were made with Debian's minisign 0.11
//! (`minisign -G -W`, then `minisign -S` and `minisign -S -l` on `KAT_PAYLOAD`).

use std::io::{self, Read};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;

pub(super) const KAT_PUBLIC: &str = "untrusted comment: minisign public key A3ECBB91AEC22A92\n\
RWSSKsKukbvso6p9+eRtE7qLn+3cS0W+6m4TGQMX7KYtq2iF6KZEtWor\n";

/// Unencrypted, as written by `minisign -G -W`: kdf [0,0], zero salt, limits and checksum.
pub(super) const KAT_SECRET: &str = "untrusted comment: minisign encrypted secret key\n\
RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAkirCrpG77KP5BjvIbFuyawzkIm9NaH98wdyUzNzijH9NsWyA3QXsmap9+eRtE7qLn+3cS0W+6m4TGQMX7KYtq2iF6KZEtWorAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";

pub(super) const KAT_PAYLOAD: &[u8] = b"Keel known-answer payload\n";

pub(super) const KAT_SIGNATURE: &str = "untrusted comment: signature from minisign secret key\n\
RUSSKsKukbvso1EBoocoKPH2TCEuF7evVJVF2CNKni0voIWOfjR402o4aEkg0rzakLWN6Uesj9uSQerRoT9iyM/Qvto0tqNm2QE=\n\
trusted comment: keel kat prehashed\n\
TjZnflMwp+kY/cIsr/IKLmdnI1L8l3b5R6o2cncJ14/Cpwi8xBBS7E2o+rgSAAjYdGXHgDbE+0ggFa4iXk/CCQ==\n";

pub(super) const KAT_LEGACY_SIGNATURE: &str = "untrusted comment: legacy sig\n\
RWSSKsKukbvso9E4WUJ1x1mRriA6xn30SOHGFIl0Adu1IVg5ze0AyqTpIzBrBvspsxC4ithlYQD9jnta72rB+diNn8yrgCCHWAM=\n\
trusted comment: keel kat legacy\n\
PyZpGBhnsHnOMcf+d8bREYwkmGYbhtFe0178vtHnkUEFnPayKPn+QGwNhj2TZixybb8MA3sE4f0Qs2PizKpuBA==\n";

pub(super) fn kat_keys() -> TrustedKeys {
    TrustedKeys::parse(KAT_PUBLIC).unwrap()
}

/// Replaces line `index` (0-based) of a file.
pub(super) fn replace_line(text: &str, index: usize, new: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines[index] = new;
    lines.join("\n") + "\n"
}

pub(super) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub(super) fn decode_line(text: &str, index: usize) -> Vec<u8> {
    STANDARD.decode(text.lines().nth(index).unwrap()).unwrap()
}

#[test]
fn key_id_prints_like_minisign() {
    let id = KeyId([0x92, 0x2a, 0xc2, 0xae, 0x91, 0xbb, 0xec, 0xa3]);
    assert_eq!(id.to_string(), "A3ECBB91AEC22A92");
    assert_eq!("A3ECBB91AEC22A92".parse::<KeyId>().unwrap(), id);
    // Leading zeros are not printed, as minisign's %PRIX64 prints them.
    let small = KeyId(0x0D42_5A00_0000_0001u64.to_le_bytes());
    assert_eq!(small.to_string(), "D425A0000000001");
    assert_eq!("D425A0000000001".parse::<KeyId>().unwrap(), small);
    assert_eq!("a3ecbb91aec22a92".parse::<KeyId>().unwrap(), id);
    for bad in [
        "",
        "A3ECBB91AEC22A92A",
        "+3ECBB91AEC22A92",
        "G3ECBB91AEC22A92",
    ] {
        assert!(
            matches!(bad.parse::<KeyId>(), Err(FormatError::InvalidKeyId { .. })),
            "{bad}"
        );
    }
}

#[test]
fn reads_and_rewrites_minisign_public_key() {
    let key = PublicKey::parse(KAT_PUBLIC).unwrap();
    assert_eq!(key.key_id().to_string(), "A3ECBB91AEC22A92");
    assert_eq!(
        key.to_file_string(&key.default_comment()).unwrap(),
        KAT_PUBLIC
    );
    assert_eq!(
        key.to_base64(),
        "RWSSKsKukbvso6p9+eRtE7qLn+3cS0W+6m4TGQMX7KYtq2iF6KZEtWor"
    );
    assert_eq!(PublicKey::from_base64(&key.to_base64()).unwrap(), key);
    // CRLF line endings and a missing final newline are accepted.
    let crlf = KAT_PUBLIC.replace('\n', "\r\n");
    assert_eq!(PublicKey::parse(&crlf).unwrap(), key);
    assert_eq!(PublicKey::parse(KAT_PUBLIC.trim_end()).unwrap(), key);
}

#[test]
fn public_key_errors() {
    let kat_line = KAT_PUBLIC.lines().nth(1).unwrap();
    let err = PublicKey::parse("").unwrap_err();
    assert!(
        matches!(err, FormatError::Truncated { line: 1, .. }),
        "{err}"
    );
    let err = PublicKey::parse("untrusted comment: x\n").unwrap_err();
    assert!(
        matches!(err, FormatError::Truncated { line: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("line 2"), "{err}");
    let err = PublicKey::parse(&format!("comment: x\n{kat_line}\n")).unwrap_err();
    assert!(
        matches!(err, FormatError::MissingPrefix { line: 1, .. }),
        "{err}"
    );
    let err = PublicKey::parse("untrusted comment: x\nnot base64!\n").unwrap_err();
    assert!(matches!(err, FormatError::Base64 { line: 2, .. }), "{err}");
    let err = PublicKey::parse(&format!("untrusted comment: x\n{}\n", b64(&[0; 30]))).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::WrongLength {
                line: 2,
                expected: 42,
                actual: 30,
                ..
            }
        ),
        "{err}"
    );
    let err = PublicKey::parse(&format!("{KAT_PUBLIC}extra\n")).unwrap_err();
    assert!(
        matches!(err, FormatError::TrailingData { line: 3, .. }),
        "{err}"
    );

    let mut blob = decode_line(KAT_PUBLIC, 1);
    blob[1] = b'D';
    let err = PublicKey::parse(&replace_line(KAT_PUBLIC, 1, &b64(&blob))).unwrap_err();
    assert!(
        matches!(err, FormatError::UnsupportedAlgorithm { line: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"ED\""), "{err}");

    // y = 2 is not on the curve; y = 1 is the identity, a small-order (weak) point.
    for point in [[2u8; 32], {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    }] {
        let mut blob = decode_line(KAT_PUBLIC, 1);
        blob[10..].copy_from_slice(&point);
        let err = PublicKey::parse(&replace_line(KAT_PUBLIC, 1, &b64(&blob))).unwrap_err();
        assert!(
            matches!(err, FormatError::InvalidPublicKey { line: 2, .. }),
            "{err}"
        );
    }

    let err = PublicKey::parse(KAT_PUBLIC)
        .unwrap()
        .to_file_string("two\nlines")
        .unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::InvalidComment {
                problem: CommentProblem::ForbiddenCharacter('\n'),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn wrong_kind_of_file_is_named() {
    let (sig, secret, public) = (KAT_SIGNATURE, KAT_SECRET, KAT_PUBLIC);

    let kind_of = |err: FormatError| match err {
        FormatError::WrongKind {
            expected, found, ..
        } => (expected, found),
        other => panic!("expected WrongKind, got {other}"),
    };
    use FileKind as K;
    assert_eq!(
        kind_of(PublicKey::parse(secret).unwrap_err()),
        (K::PublicKey, K::SecretKey)
    );
    assert_eq!(
        kind_of(PublicKey::parse(sig).unwrap_err()),
        (K::PublicKey, K::Signature)
    );
    assert_eq!(
        kind_of(TrustedKeys::parse(sig).unwrap_err()),
        (K::PublicKey, K::Signature)
    );
    assert_eq!(
        kind_of(TrustedKeys::parse(secret).unwrap_err()),
        (K::PublicKey, K::SecretKey)
    );
    assert_eq!(
        kind_of(SignatureFile::parse(public).unwrap_err()),
        (K::Signature, K::PublicKey)
    );
    assert_eq!(
        kind_of(SignatureFile::parse(secret).unwrap_err()),
        (K::Signature, K::SecretKey)
    );
    #[cfg(feature = "secret-keys")]
    {
        assert_eq!(
            kind_of(SecretKeyFile::parse(public).unwrap_err()),
            (K::SecretKey, K::PublicKey)
        );
        assert_eq!(
            kind_of(SecretKeyFile::parse(sig).unwrap_err()),
            (K::SecretKey, K::Signature)
        );
    }
    let message = PublicKey::parse(secret).unwrap_err().to_string();
    assert!(
        message.contains("expected a minisign public key"),
        "{message}"
    );
    assert!(message.contains("secret key"), "{message}");
}

#[test]
fn verifies_minisign_signatures() {
    let keys = kat_keys();
    let sig = SignatureFile::parse(KAT_SIGNATURE).unwrap();
    assert!(sig.is_prehashed());
    assert_eq!(sig.key_id().to_string(), "A3ECBB91AEC22A92");
    assert_eq!(
        sig.untrusted_comment(),
        "signature from minisign secret key"
    );
    let ok = verify(&keys, &sig, KAT_PAYLOAD).unwrap();
    assert_eq!(
        ok,
        Verified {
            key_id: sig.key_id(),
            trusted_comment: "keel kat prehashed".into(),
            prehashed: true,
        }
    );
    assert_eq!(
        verify_require_prehashed(&keys, &sig, KAT_PAYLOAD).unwrap(),
        ok
    );
    assert_eq!(sig.to_file_string(), KAT_SIGNATURE);

    let legacy = SignatureFile::parse(KAT_LEGACY_SIGNATURE).unwrap();
    assert!(!legacy.is_prehashed());
    let ok = verify(&keys, &legacy, KAT_PAYLOAD).unwrap();
    assert_eq!(ok.trusted_comment, "keel kat legacy");
    assert!(!ok.prehashed);
    assert_eq!(verify_bytes(&keys, &legacy, KAT_PAYLOAD).unwrap(), ok);
    assert!(matches!(
        verify(&keys, &legacy, b"other".as_slice()),
        Err(VerifyError::BadSignature { .. })
    ));
    assert!(matches!(
        verify_require_prehashed(&keys, &legacy, KAT_PAYLOAD),
        Err(VerifyError::LegacyRefused)
    ));
}

#[test]
fn malformed_signature_files() {
    let sig = KAT_SIGNATURE;
    let lines: Vec<&str> = sig.lines().collect();
    for keep in 0..4 {
        let cut: String = lines[..keep].iter().map(|l| format!("{l}\n")).collect();
        let err = SignatureFile::parse(&cut).unwrap_err();
        match err {
            FormatError::Truncated { line, expected, .. } => {
                assert_eq!(line, keep + 1);
                assert!(!expected.is_empty());
            }
            other => panic!("{keep} lines: {other}"),
        }
    }
    let err = SignatureFile::parse(&lines[..3].join("\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the signature file is truncated: it ends before line 4, which should be the \
         base64-encoded global signature"
    );

    let err = SignatureFile::parse(&replace_line(sig, 2, "comment: c")).unwrap_err();
    assert!(
        matches!(err, FormatError::MissingPrefix { line: 3, .. }),
        "{err}"
    );
    let err = SignatureFile::parse(&replace_line(sig, 0, "signature")).unwrap_err();
    assert!(
        matches!(err, FormatError::MissingPrefix { line: 1, .. }),
        "{err}"
    );
    let err = SignatureFile::parse(&replace_line(sig, 3, "AAAA")).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::WrongLength {
                line: 4,
                expected: 64,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = SignatureFile::parse(&replace_line(sig, 3, "@@@@")).unwrap_err();
    assert!(matches!(err, FormatError::Base64 { line: 4, .. }), "{err}");
    let err = SignatureFile::parse(&format!("{sig}more\n")).unwrap_err();
    assert!(
        matches!(err, FormatError::TrailingData { line: 5, .. }),
        "{err}"
    );
    SignatureFile::parse(&format!("{sig}\n\n")).unwrap();

    let mut blob = decode_line(sig, 1);
    blob[..2].copy_from_slice(b"EX");
    let err = SignatureFile::parse(&replace_line(sig, 1, &b64(&blob))).unwrap_err();
    assert!(
        matches!(err, FormatError::UnsupportedAlgorithm { line: 2, found: Algorithm(a), .. } if a == *b"EX"),
        "{err}"
    );

    // minisign would cut the comment at the NUL and check a different text.
    let err = SignatureFile::parse(&replace_line(sig, 2, "trusted comment: a\0b")).unwrap_err();
    assert!(
        matches!(err, FormatError::InvalidComment { line: Some(3), .. }),
        "{err}"
    );
}

#[test]
fn legacy_signatures_over_large_data_are_refused() {
    struct Endless;
    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(0);
            Ok(buf.len())
        }
    }
    let keys = kat_keys();
    let legacy = SignatureFile::parse(KAT_LEGACY_SIGNATURE).unwrap();
    // The production limit is 1 GiB; a smaller one keeps the test from allocating that much.
    let err = signature::verify_reader(&keys, &legacy, Endless, true, 1 << 20).unwrap_err();
    assert!(
        matches!(err, VerifyError::LegacyTooLarge { limit: 1048576 }),
        "{err}"
    );
    let err = signature::verify_reader(&keys, &legacy, KAT_PAYLOAD, true, 3).unwrap_err();
    assert!(
        matches!(err, VerifyError::LegacyTooLarge { limit: 3 }),
        "{err}"
    );
}
