//! A small DHCP server for the tests, written independently of the client's packet code so a
//! shared encoding bug cannot cancel out. It answers DISCOVER and REQUEST with fixed lease
//! data, and can misbehave on request.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::lab::Lab;

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const LEASED_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
pub const DECOY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);

/// Lease times (seconds) and ways to misbehave.
#[derive(Clone, Copy)]
pub struct Behavior {
    pub lease: u32,
    pub t1: u32,
    pub t2: u32,
    /// Send an OFFER for another transaction (and address) before each real one.
    pub decoy_offer: bool,
    /// NAK the first REQUEST.
    pub nak_first_request: bool,
    /// NAK the first renewal (a REQUEST with ciaddr set).
    pub nak_first_renewal: bool,
    /// Drop unicast requests, as a server behind a relay that the client cannot reach directly.
    pub ignore_unicast: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            lease: 3600,
            t1: 1800,
            t2: 3000,
            decoy_offer: false,
            nak_first_request: false,
            nak_first_renewal: false,
            ignore_unicast: false,
        }
    }
}

/// A client message as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub kind: u8,
    pub unicast: bool,
    pub broadcast_flag: bool,
    pub ciaddr: Ipv4Addr,
    pub requested: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub client_id: Option<Vec<u8>>,
    pub chaddr: [u8; 6],
}

pub struct Server {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(lab: &Lab, behavior: Behavior) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, dev) = (lab.server_ns.clone(), lab.server_if.clone());
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let handle = std::thread::spawn(move || {
            enter_netns(&ns);
            // Unicast and broadcast arrive on separate sockets so the test can tell a
            // RENEWING request (unicast to the server) from the others.
            let unicast = UdpSocket::bind(SocketAddrV4::new(SERVER_IP, 67)).unwrap();
            bind_to_device(&unicast, &dev);
            unicast.set_broadcast(true).unwrap();
            let broadcast = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::BROADCAST, 67)).unwrap();
            bind_to_device(&broadcast, &dev);
            for s in [&unicast, &broadcast] {
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            }
            ready_tx.send(()).unwrap();
            let mut naks = Naks {
                request: behavior.nak_first_request,
                renewal: behavior.nak_first_renewal,
            };
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                for (sock, is_unicast) in [(&unicast, true), (&broadcast, false)] {
                    let Ok((n, _)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let Some(req) = parse_request(&buf[..n], is_unicast) else {
                        continue;
                    };
                    seen2.lock().unwrap().push(req.clone());
                    if is_unicast && behavior.ignore_unicast {
                        continue;
                    }
                    let xid = u32::from_be_bytes(buf[4..8].try_into().unwrap());
                    answer(&unicast, &req, xid, &buf[..n], behavior, &mut naks);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the DHCP server did not start");
        Server {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns on a valid namespace fd; it affects only this thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

fn bind_to_device(sock: &UdpSocket, dev: &str) {
    // SAFETY: the pointer and length describe `dev`'s bytes.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE: {}", std::io::Error::last_os_error());
}

fn parse_request(b: &[u8], unicast: bool) -> Option<Seen> {
    if b.len() < 240 || b[0] != 1 || b[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
    let mut seen = Seen {
        kind: 0,
        unicast,
        broadcast_flag: b[10] & 0x80 != 0,
        ciaddr: ip(12),
        requested: None,
        server_id: None,
        client_id: None,
        chaddr: b[28..34].try_into().unwrap(),
    };
    let mut i = 240;
    while i + 1 < b.len() && b[i] != 255 {
        if b[i] == 0 {
            i += 1;
            continue;
        }
        let (code, len) = (b[i], b[i + 1] as usize);
        let v = b.get(i + 2..i + 2 + len)?;
        match code {
            53 => seen.kind = v[0],
            50 => seen.requested = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
            54 => seen.server_id = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
            61 => seen.client_id = Some(v.to_vec()),
            _ => {}
        }
        i += 2 + len;
    }
    Some(seen)
}

fn reply(req: &[u8], xid: u32, kind: u8, yiaddr: Ipv4Addr, b: Behavior) -> Vec<u8> {
    let mut out = vec![0u8; 236];
    out[0] = 2;
    out[1] = 1;
    out[2] = 6;
    out[4..8].copy_from_slice(&xid.to_be_bytes());
    out[10..12].copy_from_slice(&req[10..12]);
    out[12..16].copy_from_slice(&req[12..16]);
    out[16..20].copy_from_slice(&yiaddr.octets());
    out[20..24].copy_from_slice(&SERVER_IP.octets());
    out[28..44].copy_from_slice(&req[28..44]);
    out.extend_from_slice(&[99, 130, 83, 99]);
    out.extend_from_slice(&[53, 1, kind]);
    out.extend_from_slice(&[54, 4]);
    out.extend_from_slice(&SERVER_IP.octets());
    if kind == 6 {
        out.extend_from_slice(&[56, 4]);
        out.extend_from_slice(b"nope");
    } else {
        out.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        out.extend_from_slice(&[3, 4, 10, 77, 0, 1]);
        out.extend_from_slice(&[6, 8, 10, 77, 0, 53, 10, 77, 0, 54]);
        out.extend_from_slice(&[12, 10]);
        out.extend_from_slice(b"probe-node");
        out.extend_from_slice(&[15, 13]);
        out.extend_from_slice(b"test.internal");
        out.extend_from_slice(&[26, 2, 0x05, 0x78]); // MTU 1400
        for (code, v) in [(51u8, b.lease), (58, b.t1), (59, b.t2)] {
            out.extend_from_slice(&[code, 4]);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out.push(255);
    out
}

/// The NAKs still to send.
struct Naks {
    request: bool,
    renewal: bool,
}

fn answer(sock: &UdpSocket, req: &Seen, xid: u32, raw: &[u8], b: Behavior, naks: &mut Naks) {
    // RFC 2131 section 4.1: broadcast while the client has no address or asks for it.
    let dest = if req.ciaddr.is_unspecified() || req.broadcast_flag {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    } else {
        SocketAddrV4::new(req.ciaddr, 68)
    };
    let send = |pkt: Vec<u8>| {
        sock.send_to(&pkt, dest).unwrap();
    };
    match req.kind {
        1 => {
            if b.decoy_offer {
                send(reply(raw, xid.wrapping_add(1), 2, DECOY_IP, b));
            }
            send(reply(raw, xid, 2, LEASED_IP, b));
        }
        3 => {
            let wanted = req.requested.unwrap_or(req.ciaddr);
            let renewal = !req.ciaddr.is_unspecified();
            let nak = if renewal {
                std::mem::take(&mut naks.renewal)
            } else {
                std::mem::take(&mut naks.request)
            };
            if nak || wanted != LEASED_IP {
                send(reply(raw, xid, 6, Ipv4Addr::UNSPECIFIED, b));
            } else {
                send(reply(raw, xid, 5, LEASED_IP, b));
            }
        }
        _ => {}
    }
}
