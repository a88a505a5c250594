use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn offer() -> Message {
    Message {
        op: Op::Reply,
        xid: 0xdead_beef,
        secs: 3,
        broadcast: true,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::new(10, 0, 2, 15),
        siaddr: Ipv4Addr::new(10, 0, 2, 2),
        giaddr: Ipv4Addr::UNSPECIFIED,
        chaddr: MAC,
        options: Options {
            message_type: Some(MessageType::Offer),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            dns: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            hostname: Some("node-1".into()),
            domain: Some("example.internal".into()),
            mtu: Some(1400),
            lease_time: Some(86400),
            server_id: Some(Ipv4Addr::new(10, 0, 2, 2)),
            t1: Some(43200),
            t2: Some(75600),
            message: Some("hello".into()),
            ..Options::default()
        },
    }
}

/// A minimal reply: header, cookie, then `opts` verbatim (no END added).
fn reply_with(opts: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    b[0] = 2;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&7u32.to_be_bytes());
    b[28..34].copy_from_slice(&MAC);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(opts);
    b
}

#[test]
fn discover_golden_bytes() {
    let mut m = Message::client(0x0102_0304, MAC, MessageType::Discover);
    m.secs = 2;
    m.broadcast = true;
    m.options.client_id = Some([&[1u8][..], &MAC].concat());
    m.options.params = vec![1, 3, 6];
    m.options.max_size = Some(1500);
    let got = m.encode();

    let mut want = vec![
        1, 1, 6, 0, // op, htype, hlen, hops
        1, 2, 3, 4, // xid
        0, 2, // secs
        0x80, 0, // flags: broadcast
    ];
    want.extend_from_slice(&[0; 16]); // ciaddr yiaddr siaddr giaddr
    want.extend_from_slice(&MAC);
    want.extend_from_slice(&[0; 10 + 64 + 128]); // chaddr padding, sname, file
    want.extend_from_slice(&[99, 130, 83, 99]);
    want.extend_from_slice(&[53, 1, 1]);
    want.extend_from_slice(&[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    want.extend_from_slice(&[57, 2, 0x05, 0xdc]);
    want.extend_from_slice(&[55, 3, 1, 3, 6]);
    want.push(255);
    want.resize(300, 0);
    assert_eq!(got, want);
}

#[test]
fn round_trip() {
    let m = offer();
    let bytes = m.encode();
    assert_eq!(Message::decode(&bytes).unwrap(), m);

    let mut req = Message::client(42, MAC, MessageType::Request);
    req.ciaddr = Ipv4Addr::new(192, 168, 1, 9);
    req.options.requested_ip = Some(Ipv4Addr::new(192, 168, 1, 9));
    req.options.server_id = Some(Ipv4Addr::new(192, 168, 1, 1));
    req.options.params = REQUESTED_PARAMS.to_vec();
    assert_eq!(Message::decode(&req.encode()).unwrap(), req);
}

#[test]
fn long_options_split_and_rejoin() {
    let mut m = offer();
    m.options.dns = (0..100).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    let bytes = m.encode();
    // 400 bytes of DNS servers need two instances of option 6.
    assert!(bytes.windows(2).any(|w| w == [6, 255]));
    assert_eq!(Message::decode(&bytes).unwrap().options.dns.len(), 100);
}

#[test]
fn short_and_bad_headers() {
    assert_eq!(Message::decode(&[]), Err(DecodeError::Short(0)));
    let full = offer().encode();
    for len in [1, 100, 236, 239] {
        assert_eq!(Message::decode(&full[..len]), Err(DecodeError::Short(len)));
    }
    let mut b = full.clone();
    b[0] = 3;
    assert_eq!(Message::decode(&b), Err(DecodeError::BadOp(3)));
    let mut b = full.clone();
    b[2] = 16;
    assert!(matches!(
        Message::decode(&b),
        Err(DecodeError::NotEthernet { hlen: 16, .. })
    ));
    let mut b = full;
    b[236] = 0;
    assert_eq!(Message::decode(&b), Err(DecodeError::NoMagic));
}

#[test]
fn every_truncation_is_an_error_or_a_smaller_message_never_a_panic() {
    let full = offer().encode();
    for len in 0..full.len() {
        let _ = Message::decode(&full[..len]);
    }
    // Cutting inside an option is an error, not a silently shorter list.
    let end = reply_with(&[53, 1, 2, 6, 8, 1, 1, 1, 1, 8, 8]);
    assert_eq!(
        Message::decode(&end),
        Err(DecodeError::Truncated { code: 6 })
    );
    assert_eq!(
        Message::decode(&reply_with(&[53])),
        Err(DecodeError::Truncated { code: 53 })
    );
}

#[test]
fn garbage_never_panics() {
    // A cheap deterministic fuzz: random option areas behind a valid header.
    let mut state = 0x1234_5678u32;
    for _ in 0..20_000 {
        let mut opts = Vec::new();
        for _ in 0..(state % 64) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            opts.push((state % 70) as u8);
        }
        let _ = Message::decode(&reply_with(&opts));
    }
}

#[test]
fn wrong_option_lengths() {
    let cases: &[(&[u8], DecodeError)] = &[
        (&[53, 2, 2, 0], DecodeError::BadLength { code: 53, len: 2 }),
        (&[53, 0], DecodeError::BadLength { code: 53, len: 0 }),
        (&[53, 1, 9], DecodeError::BadValue { code: 53 }),
        (
            &[1, 5, 255, 255, 255, 0, 0],
            DecodeError::BadLength { code: 1, len: 5 },
        ),
        (
            &[1, 3, 255, 255, 255],
            DecodeError::BadLength { code: 1, len: 3 },
        ),
        (&[1, 4, 255, 0, 255, 0], DecodeError::BadValue { code: 1 }),
        (
            &[3, 5, 1, 2, 3, 4, 5],
            DecodeError::BadLength { code: 3, len: 5 },
        ),
        (&[6, 0], DecodeError::BadLength { code: 6, len: 0 }),
        (&[51, 2, 0, 1], DecodeError::BadLength { code: 51, len: 2 }),
        (
            &[54, 6, 1, 2, 3, 4, 5, 6],
            DecodeError::BadLength { code: 54, len: 6 },
        ),
        (&[26, 2, 0, 10], DecodeError::BadValue { code: 26 }),
        (&[12, 2, 0xff, 0xfe], DecodeError::BadValue { code: 12 }),
        (&[12, 0], DecodeError::BadValue { code: 12 }),
        (
            &[15, 3, b'a', b'\n', b'b'],
            DecodeError::BadValue { code: 15 },
        ),
        (&[52, 1, 7], DecodeError::BadValue { code: 52 }),
    ];
    for (opts, want) in cases {
        let mut o = opts.to_vec();
        o.push(255);
        assert_eq!(
            Message::decode(&reply_with(&o)).as_ref(),
            Err(want),
            "{opts:?}"
        );
    }
}

#[test]
fn missing_options_and_lenient_framing() {
    // No options at all, no END: a valid message with nothing in it.
    let m = Message::decode(&reply_with(&[])).unwrap();
    assert_eq!(m.options, Options::default());
    assert_eq!(m.message_type(), None);
    // PADs are skipped, a NUL-terminated hostname is trimmed, unknown options are ignored,
    // and anything after END is not parsed.
    let m = Message::decode(&reply_with(&[
        0, 0, 53, 1, 5, 250, 2, 9, 9, 12, 5, b'n', b'o', b'd', b'e', 0, 255, 53, 1, 99,
    ]))
    .unwrap();
    assert_eq!(m.message_type(), Some(MessageType::Ack));
    assert_eq!(m.options.hostname.as_deref(), Some("node"));
    assert_eq!(m.xid, 7);
    assert_eq!(m.chaddr, MAC);
}

#[test]
fn overloaded_file_and_sname() {
    let mut b = reply_with(&[53, 1, 2, 52, 1, 3, 255]);
    // file (108..236) carries the server id, sname (44..108) the lease time.
    b[108..114].copy_from_slice(&[54, 4, 10, 0, 0, 1]);
    b[114] = 255;
    b[44..50].copy_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]);
    b[50] = 255;
    let m = Message::decode(&b).unwrap();
    assert_eq!(m.options.server_id, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(m.options.lease_time, Some(3600));
    // Overloading with a truncated option inside `file` is still an error.
    b[108..111].copy_from_slice(&[54, 200, 1]);
    assert_eq!(
        Message::decode(&b),
        Err(DecodeError::Truncated { code: 54 })
    );
}

#[test]
fn masks() {
    assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
    assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
    assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
    assert_eq!(mask_prefix(Ipv4Addr::new(255, 255, 128, 0)), Some(17));
    assert_eq!(mask_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
    assert_eq!(mask_prefix(Ipv4Addr::new(0, 0, 0, 1)), None);
}
