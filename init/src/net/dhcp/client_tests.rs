use super::*;
use packet::Options;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn ack(options: Options) -> Message {
    let mut m = Message::client(1, MAC, MessageType::Ack);
    m.op = Op::Reply;
    m.yiaddr = Ipv4Addr::new(192, 168, 7, 20);
    m.options = Options {
        message_type: Some(MessageType::Ack),
        ..options
    };
    m
}

const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 7, 1);

#[test]
fn lease_timers_default_and_clamp() {
    let now = Instant::now();
    let l = Lease::from_ack(
        &ack(Options {
            lease_time: Some(1000),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            ..Options::default()
        }),
        SERVER,
        None,
        now,
    )
    .unwrap();
    assert_eq!(l.prefix, 24);
    assert_eq!(l.server, SERVER);
    assert_eq!(l.duration, Some(Duration::from_secs(1000)));
    assert_eq!((l.t1.as_secs(), l.t2.as_secs()), (500, 875));
    let d = l.deadlines().unwrap();
    assert_eq!(d.expiry - now, Duration::from_secs(1000));

    // T1 > T2 > lease from a confused server: clamped into order.
    let l = Lease::from_ack(
        &ack(Options {
            lease_time: Some(100),
            t1: Some(500),
            t2: Some(400),
            server_id: Some(Ipv4Addr::new(10, 1, 1, 1)),
            ..Options::default()
        }),
        SERVER,
        Some(20),
        now,
    )
    .unwrap();
    assert_eq!((l.t1.as_secs(), l.t2.as_secs()), (100, 100));
    assert_eq!(
        l.prefix, 20,
        "the OFFER's mask applies when the ACK has none"
    );
    assert_eq!(l.server, Ipv4Addr::new(10, 1, 1, 1));

    // A zero lease would make renewal spin.
    let l = Lease::from_ack(
        &ack(Options {
            lease_time: Some(0),
            ..Options::default()
        }),
        SERVER,
        None,
        now,
    )
    .unwrap();
    assert_eq!(l.duration, Some(Duration::from_secs(MIN_LEASE_SECS.into())));
    assert!(l.t1 >= Duration::from_secs(1));
    assert_eq!(
        l.prefix, 24,
        "classful fallback for 192.168/16 space is /24"
    );
}

#[test]
fn infinite_and_missing_lease_time() {
    let now = Instant::now();
    let inf = Lease::from_ack(
        &ack(Options {
            lease_time: Some(u32::MAX),
            ..Options::default()
        }),
        SERVER,
        None,
        now,
    )
    .unwrap();
    assert_eq!(inf.duration, None);
    assert_eq!(inf.deadlines(), None);
    let missing = Lease::from_ack(&ack(Options::default()), SERVER, None, now).unwrap();
    assert_eq!(
        missing.duration,
        Some(Duration::from_secs(DEFAULT_LEASE_SECS.into()))
    );
}

#[test]
fn unusable_addresses_are_refused() {
    for a in [
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 5),
    ] {
        let mut m = ack(Options::default());
        m.yiaddr = a;
        assert!(
            Lease::from_ack(&m, SERVER, None, Instant::now()).is_err(),
            "{a}"
        );
    }
}

#[test]
fn request_shapes() {
    let d = discover(9, MAC, 0);
    assert!(d.broadcast);
    assert_eq!(d.message_type(), Some(MessageType::Discover));
    assert_eq!(
        d.options.client_id.as_deref(),
        Some(&[1, 2, 0, 0, 0, 0, 1][..])
    );
    assert_eq!(d.options.params, packet::REQUESTED_PARAMS);

    let a = Ipv4Addr::new(10, 0, 0, 9);
    let s = request_selecting(9, MAC, 3, a, SERVER);
    assert!(s.broadcast);
    assert_eq!(s.secs, 3);
    assert_eq!(s.ciaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(s.options.requested_ip, Some(a));
    assert_eq!(s.options.server_id, Some(SERVER));

    let r = request_renewing(9, MAC, 0, a);
    assert!(!r.broadcast);
    assert_eq!(r.ciaddr, a);
    assert_eq!(r.options.requested_ip, None);
    assert_eq!(r.options.server_id, None);
    assert_eq!(r.message_type(), Some(MessageType::Request));
}

#[test]
fn replies_are_matched_by_xid_mac_and_server() {
    let mut m = ack(Options {
        server_id: Some(SERVER),
        ..Options::default()
    });
    m.xid = 77;
    assert!(answers(&m, 77, MAC));
    assert!(!answers(&m, 78, MAC), "another transaction");
    assert!(!answers(&m, 77, [2, 0, 0, 0, 0, 2]), "another client");
    let mut req = m.clone();
    req.op = Op::Request;
    assert!(
        !answers(&req, 77, MAC),
        "a client's own broadcast echoed back"
    );

    assert!(matches!(
        ack_or_nak(&m, 77, MAC, Some(SERVER)),
        Some(Reply::Ack(_))
    ));
    assert!(ack_or_nak(&m, 77, MAC, Some(Ipv4Addr::new(10, 9, 9, 9))).is_none());
    let mut nak = m.clone();
    nak.options.message_type = Some(MessageType::Nak);
    nak.options.message = Some("wrong network".into());
    assert!(matches!(
        ack_or_nak(&nak, 77, MAC, None),
        Some(Reply::Nak(Some(ref s))) if s == "wrong network"
    ));
    let mut offer = m;
    offer.options.message_type = Some(MessageType::Offer);
    assert!(ack_or_nak(&offer, 77, MAC, None).is_none());
}

#[test]
fn later_saturates() {
    let now = Instant::now();
    assert!(later(now, Duration::MAX) > now);
    assert_eq!(
        later(now, Duration::from_secs(5)) - now,
        Duration::from_secs(5)
    );
}

/// The retransmission loop over loopback sockets: the "server" ignores the first DISCOVER,
/// then sends garbage, an OFFER for another transaction and finally the right one.
#[test]
fn exchange_retransmits_and_ignores_strangers() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = match server.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let client_addr = client.local_addr().unwrap();
    let xid = 0x5151;
    let srv = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (n, _) = server.recv_from(&mut buf).unwrap();
            seen.push(Message::decode(&buf[..n]).unwrap());
        }
        let mut offer = Message::client(xid + 1, MAC, MessageType::Offer);
        offer.op = Op::Reply;
        offer.yiaddr = Ipv4Addr::new(10, 0, 0, 5);
        server.send_to(&[1, 2, 3], client_addr).unwrap();
        server.send_to(&offer.encode(), client_addr).unwrap();
        offer.xid = xid;
        server.send_to(&offer.encode(), client_addr).unwrap();
        seen
    });
    let logs = std::cell::RefCell::new(Vec::new());
    let started = Instant::now();
    let log = |s: &str| logs.borrow_mut().push(s.to_owned());
    let got = exchange(
        Channel {
            sock: &client,
            iface: "lo",
            log: &log,
        },
        dest,
        started,
        later(started, Duration::from_secs(20)),
        &|secs| discover(xid, MAC, secs),
        &mut |m| answers(m, xid, MAC).then_some(m.yiaddr),
    );
    assert_eq!(got, Some(Ipv4Addr::new(10, 0, 0, 5)));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let seen = srv.join().unwrap();
    assert!(seen.iter().all(|m| m.xid == xid));
    assert_eq!(seen[0].secs, 0);
    assert!(
        logs.borrow().iter().any(|l| l.contains("ignoring packet")),
        "{:?}",
        logs.borrow()
    );
}

#[test]
fn exchange_gives_up_at_the_deadline() {
    let quiet = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = match quiet.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let started = Instant::now();
    let got: Option<()> = exchange(
        Channel {
            sock: &client,
            iface: "lo",
            log: &|_| {},
        },
        dest,
        started,
        later(started, Duration::from_millis(1800)),
        &|secs| discover(1, MAC, secs),
        &mut |_| Some(()),
    );
    assert_eq!(got, None);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1800) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    // Two sends in 1.8 s: at 0 and after the first wait (1 s + up to 0.5 s of jitter).
    let mut buf = [0u8; 1500];
    quiet.set_nonblocking(true).unwrap();
    let mut n = 0;
    while quiet.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    assert_eq!(n, 2);
}
