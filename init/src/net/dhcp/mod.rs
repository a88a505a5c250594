//! The DHCP client (RFC 2131): acquiring a lease (DISCOVER, OFFER, REQUEST, ACK) and renewing
//! or rebinding it. Applying a lease to the interface is the caller's job ([`super`]).
//!
//! It talks through a UDP socket bound to 0.0.0.0:68 on one interface, not a packet socket,
//! so it needs no BPF filter and no hand-built IP/UDP headers. The price is that replies must
//! be broadcast until the interface has an address, which the BROADCAST flag asks for.

pub mod packet;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use keel_contract::profile::IpCidr;
use packet::{Message, MessageType, Op};

use super::{NetError, sys};

/// A lease time of all ones means "infinite" (RFC 2132 section 9.2).
const INFINITE: u32 = u32::MAX;
/// Used when an ACK has no lease time (it must, but a lease should not fail for that alone).
const DEFAULT_LEASE_SECS: u32 = 3600;
/// Shorter leases are stretched so a broken server cannot make the renewal loop spin.
const MIN_LEASE_SECS: u32 = 10;
/// RFC 2131 section 4.1: retransmission delays double from about 4 s up to 64 s; starting at
/// 1 s gets a lease faster on a healthy network.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(64);
/// How long a REQUEST after an OFFER is retried (1 + 2 + 4 + 8 s) before starting over.
const REQUEST_WINDOW: Duration = Duration::from_secs(15);
/// Replies this client accepts, larger than one Ethernet frame's worth.
const MAX_SIZE: u16 = 1500;
const RECV_BUF: usize = 8192;
const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, packet::SERVER_PORT);

/// A lease as the client uses it; times are relative to `obtained`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The server identifier: where renewals go.
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    /// `None` for an infinite lease, which is never renewed.
    pub duration: Option<Duration>,
    /// When to start renewing with the server that granted the lease.
    pub t1: Duration,
    /// When to start asking any server (rebinding).
    pub t2: Duration,
    /// When the REQUEST that got the lease was sent: the timers count from here.
    pub obtained: Instant,
}

/// When the lease's timers fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub t1: Instant,
    pub t2: Instant,
    pub expiry: Instant,
}

impl Lease {
    /// The lease an ACK grants. `server` is who we asked; `fallback_prefix` applies when the
    /// ACK carries no subnet mask (the OFFER's, or the previous lease's).
    pub fn from_ack(
        ack: &Message,
        server: Ipv4Addr,
        fallback_prefix: Option<u8>,
        obtained: Instant,
    ) -> Result<Lease, String> {
        let address = ack.yiaddr;
        if !usable(address) {
            return Err(format!("the ACK offers unusable address {address}"));
        }
        let o = &ack.options;
        let prefix = o
            .subnet_mask
            .and_then(packet::mask_prefix)
            .or(fallback_prefix)
            .unwrap_or_else(|| classful_prefix(address));
        let secs = o.lease_time.unwrap_or(DEFAULT_LEASE_SECS);
        let (duration, t1, t2) = if secs == INFINITE {
            (None, Duration::MAX, Duration::MAX)
        } else {
            let secs = secs.max(MIN_LEASE_SECS);
            // RFC 2131 section 4.4.5 defaults: T1 = 0.5 and T2 = 0.875 of the lease.
            let t2 = o.t2.unwrap_or(secs / 8 * 7).min(secs);
            let t1 = o.t1.unwrap_or(secs / 2).min(t2).max(1);
            let s = |v: u32| Duration::from_secs(u64::from(v));
            (Some(s(secs)), s(t1), s(t2.max(t1)))
        };
        Ok(Lease {
            address,
            prefix,
            server: o.server_id.unwrap_or(server),
            routers: o.routers.clone(),
            dns: o.dns.clone(),
            hostname: o.hostname.clone(),
            domain: o.domain.clone(),
            mtu: o.mtu,
            duration,
            t1,
            t2,
            obtained,
        })
    }

    pub fn cidr(&self) -> IpCidr {
        IpCidr {
            addr: self.address.into(),
            prefix: self.prefix,
        }
    }

    /// `None` for an infinite lease.
    pub fn deadlines(&self) -> Option<Deadlines> {
        let duration = self.duration?;
        Some(Deadlines {
            t1: later(self.obtained, self.t1),
            t2: later(self.obtained, self.t2),
            expiry: later(self.obtained, duration),
        })
    }
}

/// `t + d`, saturating instead of panicking when the sum does not fit.
pub fn later(t: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(x) = t.checked_add(d) {
            return x;
        }
        d /= 2;
    }
}

fn usable(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// The pre-CIDR default, for servers that send no subnet mask at all.
fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// The interface as the client sees it.
#[derive(Debug, Clone, Copy)]
pub struct Iface<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
}

fn base(kind: MessageType, xid: u32, mac: [u8; 6], secs: u16) -> Message {
    let mut m = Message::client(xid, mac, kind);
    m.secs = secs;
    // Client identifier: hardware type 1 and the MAC (RFC 2132 section 9.14).
    let mut id = vec![1u8];
    id.extend_from_slice(&mac);
    m.options.client_id = Some(id);
    m.options.params = packet::REQUESTED_PARAMS.to_vec();
    m.options.max_size = Some(MAX_SIZE);
    m
}

pub fn discover(xid: u32, mac: [u8; 6], secs: u16) -> Message {
    let mut m = base(MessageType::Discover, xid, mac, secs);
    m.broadcast = true;
    m
}

/// The REQUEST that takes up an OFFER (SELECTING state).
pub fn request_selecting(
    xid: u32,
    mac: [u8; 6],
    secs: u16,
    address: Ipv4Addr,
    server: Ipv4Addr,
) -> Message {
    let mut m = base(MessageType::Request, xid, mac, secs);
    m.broadcast = true;
    m.options.requested_ip = Some(address);
    m.options.server_id = Some(server);
    m
}

/// The REQUEST that extends a lease (RENEWING and REBINDING): the address goes in `ciaddr`,
/// and options 50 and 54 must be absent (RFC 2131 section 4.3.2).
pub fn request_renewing(xid: u32, mac: [u8; 6], secs: u16, address: Ipv4Addr) -> Message {
    let mut m = base(MessageType::Request, xid, mac, secs);
    m.ciaddr = address;
    m
}

/// Whether `m` answers our transaction `xid`; every other packet on port 68 (other clients'
/// replies, stale transactions) is ignored.
pub fn answers(m: &Message, xid: u32, mac: [u8; 6]) -> bool {
    m.op == Op::Reply && m.xid == xid && m.chaddr == mac
}

/// The reply to a REQUEST.
enum Reply {
    Ack(Box<Message>),
    Nak(Option<String>),
}

fn ack_or_nak(m: &Message, xid: u32, mac: [u8; 6], server: Option<Ipv4Addr>) -> Option<Reply> {
    if !answers(m, xid, mac) {
        return None;
    }
    // After SELECTING only the chosen server's answer counts (others may NAK what they did
    // not offer); a missing server id is tolerated.
    if let (Some(want), Some(got)) = (server, m.options.server_id)
        && want != got
    {
        return None;
    }
    match m.message_type() {
        Some(MessageType::Ack) => Some(Reply::Ack(Box::new(m.clone()))),
        Some(MessageType::Nak) => Some(Reply::Nak(m.options.message.clone())),
        _ => None,
    }
}

/// The client's socket, the interface it is bound to, and where to log.
#[derive(Clone, Copy)]
struct Channel<'a> {
    sock: &'a UdpSocket,
    iface: &'a str,
    log: &'a dyn Fn(&str),
}

/// Sends what `build` makes (given the `secs` field), retransmitting with doubling waits,
/// until `accept` takes a reply or `deadline` passes (`None`). Send and receive errors are
/// logged and retried: a link that flaps mid-exchange must not end the attempt.
fn exchange<T>(
    ch: Channel<'_>,
    dest: SocketAddrV4,
    started: Instant,
    deadline: Instant,
    build: &dyn Fn(u16) -> Message,
    accept: &mut dyn FnMut(&Message) -> Option<T>,
) -> Option<T> {
    let Channel { sock, iface, log } = ch;
    let mut wait = FIRST_WAIT;
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let secs = started.elapsed().as_secs().min(u64::from(u16::MAX)) as u16;
        if let Err(e) = sock.send_to(&build(secs).encode(), dest) {
            log(&format!("DHCP on {iface}: sendto {dest}: {e}"));
        }
        // Up to 0.5 s of jitter keeps a rack of nodes that booted together from retrying in
        // lockstep.
        let jitter = Duration::from_millis(u64::from(sys::random_u32() % 500));
        let round_end = later(now, wait + jitter).min(deadline);
        while let Some(left) = round_end.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            if let Err(e) = sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))) {
                log(&format!("DHCP on {iface}: SO_RCVTIMEO: {e}"));
                std::thread::sleep(left);
                break;
            }
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => match Message::decode(buf.get(..n).unwrap_or_default()) {
                    Ok(m) => {
                        if let Some(t) = accept(&m) {
                            return Some(t);
                        }
                    }
                    Err(e) => log(&format!(
                        "DHCP on {iface}: ignoring packet from {from}: {e}"
                    )),
                },
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    log(&format!("DHCP on {iface}: recvfrom: {e}"));
                    std::thread::sleep(left.min(Duration::from_secs(1)));
                }
            }
        }
        wait = (wait * 2).min(MAX_WAIT);
    }
}

/// Gets a lease from scratch (INIT state), giving up after `timeout`.
pub fn acquire(iface: Iface<'_>, timeout: Duration, log: &dyn Fn(&str)) -> Result<Lease, NetError> {
    let started = Instant::now();
    let deadline = later(started, timeout);
    let sock = sys::dhcp_socket(iface.name)?;
    let ch = Channel {
        sock: &sock,
        iface: iface.name,
        log,
    };
    let mac = iface.mac;
    let mut last = String::from("no OFFER received");
    loop {
        if Instant::now() >= deadline {
            return Err(NetError::DhcpTimeout {
                iface: iface.name.to_owned(),
                secs: timeout.as_secs(),
                last,
            });
        }
        let xid = sys::random_u32();
        log(&format!(
            "DHCP on {}: DISCOVER (xid {xid:#010x})",
            iface.name
        ));
        let offer = exchange(
            ch,
            BROADCAST,
            started,
            deadline,
            &|secs| discover(xid, mac, secs),
            &mut |m| {
                let ok = answers(m, xid, mac)
                    && m.message_type() == Some(MessageType::Offer)
                    && usable(m.yiaddr)
                    && m.options.server_id.is_some();
                ok.then(|| m.clone())
            },
        );
        let Some(offer) = offer else { continue };
        let Some(server) = offer.options.server_id else {
            continue;
        };
        let address = offer.yiaddr;
        log(&format!(
            "DHCP on {}: OFFER of {address} from {server}",
            iface.name
        ));
        // RFC 2131 section 4.4.5: lease times count from when the REQUEST was sent.
        let requested_at = Instant::now();
        let request_deadline = later(requested_at, REQUEST_WINDOW).min(deadline);
        let offered_prefix = offer.options.subnet_mask.and_then(packet::mask_prefix);
        let reply = exchange(
            ch,
            BROADCAST,
            started,
            request_deadline,
            &|secs| request_selecting(xid, mac, secs, address, server),
            &mut |m| match ack_or_nak(m, xid, mac, Some(server))? {
                Reply::Nak(msg) => Some(Err(msg)),
                Reply::Ack(ack) => {
                    match Lease::from_ack(&ack, server, offered_prefix, requested_at) {
                        Ok(lease) => Some(Ok(lease)),
                        Err(why) => {
                            log(&format!("DHCP on {}: ignoring ACK: {why}", iface.name));
                            None
                        }
                    }
                }
            },
        );
        match reply {
            Some(Ok(lease)) => return Ok(lease),
            Some(Err(msg)) => {
                last = format!(
                    "NAK from {server}: {}",
                    msg.as_deref().unwrap_or("no reason given")
                );
                // Starting over at once would let a confused server make us flood the link.
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(FIRST_WAIT));
            }
            None => last = format!("no ACK from {server} for {address}"),
        }
        log(&format!("DHCP on {}: {last}; starting over", iface.name));
    }
}

/// The outcome of trying to extend a lease.
#[derive(Debug)]
pub enum Renewal {
    Acked(Lease),
    /// The server refused: the address must be given up at once.
    Nak(Option<String>),
    /// Nobody answered before the deadline.
    NoAnswer,
}

/// Tries to extend `lease` until `until`: unicast to its server (RENEWING) or, when
/// `rebinding`, broadcast to any server.
pub fn renew(
    iface: Iface<'_>,
    lease: &Lease,
    rebinding: bool,
    until: Instant,
    log: &dyn Fn(&str),
) -> Result<Renewal, NetError> {
    let sock = sys::dhcp_socket(iface.name)?;
    let (mac, address) = (iface.mac, lease.address);
    let xid = sys::random_u32();
    let dest = if rebinding {
        BROADCAST
    } else {
        SocketAddrV4::new(lease.server, packet::SERVER_PORT)
    };
    let started = Instant::now();
    let reply = exchange(
        Channel {
            sock: &sock,
            iface: iface.name,
            log,
        },
        dest,
        started,
        until,
        &|secs| request_renewing(xid, mac, secs, address),
        &mut |m| match ack_or_nak(m, xid, mac, None)? {
            Reply::Nak(msg) => Some(Renewal::Nak(msg)),
            Reply::Ack(ack) => {
                match Lease::from_ack(&ack, lease.server, Some(lease.prefix), started) {
                    Ok(new) => Some(Renewal::Acked(new)),
                    Err(why) => {
                        log(&format!("DHCP on {}: ignoring ACK: {why}", iface.name));
                        None
                    }
                }
            }
        },
    );
    Ok(reply.unwrap_or(Renewal::NoAnswer))
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
