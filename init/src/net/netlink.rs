//! rtnetlink requests for addresses and routes, over a raw AF_NETLINK socket. Netlink rather
//! than SIOCSIFADDR/SIOCADDRT because it handles IPv6 the same way, can replace an existing
//! address or route in one request (renewals re-apply the same lease), and reports errors per
//! request. Messages are built by pure functions so their bytes are unit-tested.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use keel_contract::profile::IpCidr;

use super::{NetError, sys};

const NLMSG_HDRLEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
/// In a delete request: match routes of any scope.
const RT_SCOPE_NOWHERE: u8 = 255;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
/// The kernel answers within microseconds; the timeout only stops PID 1 from hanging forever
/// should an acknowledgement never come.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Who installed a route, as `ip route` shows it (`proto static`, `proto dhcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Static = 4,
    Dhcp = 16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Add,
    Delete,
}

/// A route in the main table through one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix length; prefix 0 is the default route.
    pub dst: IpAddr,
    pub dst_len: u8,
    pub gateway: Option<IpAddr>,
    pub proto: Proto,
    pub scope: u8,
    /// The route metric; `None` is 0, the most preferred.
    pub metric: Option<u32>,
}

impl Route {
    pub fn default_via(gateway: IpAddr, proto: Proto) -> Route {
        let dst = match gateway {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        };
        Route {
            dst,
            dst_len: 0,
            gateway: Some(gateway),
            proto,
            scope: RT_SCOPE_UNIVERSE,
            metric: None,
        }
    }

    /// `default dev X scope link metric 4294967295`, held only while the DHCP client has no
    /// address. With reverse-path filtering on (rp_filter 1 or 2), the kernel drops a broadcast
    /// OFFER arriving on an interface that has no route back to the server, before it reaches
    /// the UDP socket; this route gives it one without outranking any real default route.
    pub fn dhcp_bootstrap() -> Route {
        Route {
            dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            dst_len: 0,
            gateway: None,
            proto: Proto::Dhcp,
            scope: RT_SCOPE_LINK,
            metric: Some(u32::MAX),
        }
    }

    /// A route to one host directly on the link: lets a gateway outside the leased subnet
    /// (common with /32 leases in clouds) be reached.
    pub fn on_link_host(host: IpAddr, proto: Proto) -> Route {
        Route {
            dst: host,
            dst_len: if host.is_ipv4() { 32 } else { 128 },
            gateway: None,
            proto,
            scope: RT_SCOPE_LINK,
            metric: None,
        }
    }
}

fn family(a: &IpAddr) -> u8 {
    if a.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn octets(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn flags(action: Action) -> u16 {
    match action {
        // CREATE|REPLACE: applying the same lease or profile twice succeeds and updates in place.
        Action::Add => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        Action::Delete => NLM_F_REQUEST | NLM_F_ACK,
    }
}

/// One netlink message: header, fixed body, then attributes, each padded to 4 bytes.
fn message(kind: u16, flags: u16, seq: u32, body: &[u8], attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut payload = body.to_vec();
    payload.resize(align4(payload.len()), 0);
    for (ty, data) in attrs {
        payload.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        payload.extend_from_slice(&ty.to_ne_bytes());
        payload.extend_from_slice(data);
        payload.resize(align4(payload.len()), 0);
    }
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
    out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    out.extend_from_slice(&payload);
    out
}

/// RTM_NEWADDR / RTM_DELADDR for `cidr` on `ifindex`.
pub fn address_message(action: Action, seq: u32, ifindex: u32, cidr: &IpCidr) -> Vec<u8> {
    let mut body = vec![family(&cidr.addr), cidr.prefix, 0, RT_SCOPE_UNIVERSE];
    body.extend_from_slice(&ifindex.to_ne_bytes());
    let addr = octets(&cidr.addr);
    let mut attrs = vec![(IFA_LOCAL, addr.clone()), (IFA_ADDRESS, addr)];
    // Like `ip addr add ... brd +`: without it the subnet's broadcast address is not set.
    if let IpAddr::V4(a) = cidr.addr
        && cidr.prefix < 31
    {
        let host_bits = u32::MAX.checked_shr(u32::from(cidr.prefix)).unwrap_or(0);
        let brd = u32::from(a) | host_bits;
        attrs.push((IFA_BROADCAST, brd.to_be_bytes().to_vec()));
    }
    let kind = match action {
        Action::Add => RTM_NEWADDR,
        Action::Delete => RTM_DELADDR,
    };
    message(kind, flags(action), seq, &body, &attrs)
}

/// RTM_NEWROUTE / RTM_DELROUTE for `route` through `ifindex`.
pub fn route_message(action: Action, seq: u32, ifindex: u32, route: &Route) -> Vec<u8> {
    let (kind, scope) = match action {
        Action::Add => (RTM_NEWROUTE, route.scope),
        Action::Delete => (RTM_DELROUTE, RT_SCOPE_NOWHERE),
    };
    let mut body = vec![
        family(&route.dst),
        route.dst_len,
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        route.proto as u8,
        scope,
        RTN_UNICAST,
    ];
    body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    let mut attrs = Vec::new();
    if route.dst_len > 0 {
        attrs.push((RTA_DST, octets(&route.dst)));
    }
    if let Some(gw) = &route.gateway {
        attrs.push((RTA_GATEWAY, octets(gw)));
    }
    attrs.push((RTA_OIF, ifindex.to_ne_bytes().to_vec()));
    if let Some(m) = route.metric {
        attrs.push((RTA_PRIORITY, m.to_ne_bytes().to_vec()));
    }
    message(kind, flags(action), seq, &body, &attrs)
}

/// Looks through one datagram from the kernel for the acknowledgement of `seq`: `Some(Ok)` on
/// success, `Some(Err(errno))` on failure, `None` when it is not there (or the datagram is
/// malformed).
pub fn parse_ack(buf: &[u8], seq: u32) -> Option<Result<(), i32>> {
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let u32_at = |b: &[u8], i: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        let len = u32_at(rest, 0)? as usize;
        let kind = u16::from_ne_bytes(rest.get(4..6)?.try_into().ok()?);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && u32_at(rest, 8)? == seq {
            let errno = u32_at(rest, NLMSG_HDRLEN)? as i32;
            return Some(if errno == 0 { Ok(()) } else { Err(-errno) });
        }
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    None
}

/// Sends one request on a fresh socket and waits for its acknowledgement.
fn request(op: String, iface: &str, msg: &[u8]) -> Result<(), NetError> {
    let err = |source: io::Error| NetError::Sys {
        op: op.clone(),
        iface: iface.to_owned(),
        source,
    };
    let fd = sys::netlink_socket().map_err(err)?;
    let timeout = libc::timeval {
        tv_sec: ACK_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: timeval is plain data; viewing it as bytes for setsockopt is sound.
    let tv = unsafe {
        std::slice::from_raw_parts(
            (&timeout as *const libc::timeval).cast::<u8>(),
            std::mem::size_of::<libc::timeval>(),
        )
    };
    sys::set_opt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv).map_err(err)?;
    // SAFETY: msg is a live buffer of msg.len() bytes.
    let sent = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: buf is a live, writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err(e));
        }
        let got = buf.get(..n as usize).unwrap_or_default();
        match parse_ack(got, 1) {
            Some(Ok(())) => return Ok(()),
            Some(Err(errno)) => return Err(err(io::Error::from_raw_os_error(errno))),
            None => continue,
        }
    }
}

pub fn address(action: Action, iface: &str, ifindex: u32, cidr: &IpCidr) -> Result<(), NetError> {
    let op = match action {
        Action::Add => format!("RTM_NEWADDR {cidr}"),
        Action::Delete => format!("RTM_DELADDR {cidr}"),
    };
    request(op, iface, &address_message(action, 1, ifindex, cidr))
}

pub fn route(action: Action, iface: &str, ifindex: u32, route: &Route) -> Result<(), NetError> {
    let mut what = match (route.dst_len, route.gateway) {
        (0, Some(gw)) => format!("default via {gw}"),
        (0, None) => "default".to_owned(),
        (_, Some(gw)) => format!("{}/{} via {gw}", route.dst, route.dst_len),
        (_, None) => format!("{}/{}", route.dst, route.dst_len),
    };
    if let Some(m) = route.metric {
        what.push_str(&format!(" metric {m}"));
    }
    let op = match action {
        Action::Add => format!("RTM_NEWROUTE {what}"),
        Action::Delete => format!("RTM_DELROUTE {what}"),
    };
    request(op, iface, &route_message(action, 1, ifindex, route))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn new_ipv4_address_bytes() {
        let cidr: IpCidr = "10.0.2.15/24".parse().unwrap();
        let got = address_message(Action::Add, 7, 3, &cidr);
        let mut want = Vec::new();
        want.extend_from_slice(&ne32(16 + 8 + 3 * 8));
        want.extend_from_slice(&ne16(RTM_NEWADDR));
        want.extend_from_slice(&ne16(0x1 | 0x4 | 0x400 | 0x100));
        want.extend_from_slice(&ne32(7));
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&ne32(3));
        for (ty, a) in [
            (2u16, [10, 0, 2, 15]),
            (1, [10, 0, 2, 15]),
            (4, [10, 0, 2, 255]),
        ] {
            want.extend_from_slice(&ne16(8));
            want.extend_from_slice(&ne16(ty));
            want.extend_from_slice(&a);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn ipv6_address_and_point_to_point_v4_have_no_broadcast() {
        let v6: IpCidr = "fd00::2/64".parse().unwrap();
        let m = address_message(Action::Add, 1, 2, &v6);
        assert_eq!(m.len(), 16 + 8 + 2 * 20);
        assert_eq!(m[16], AF_INET6);
        let p2p: IpCidr = "10.0.0.1/32".parse().unwrap();
        assert_eq!(
            address_message(Action::Delete, 1, 2, &p2p).len(),
            16 + 8 + 2 * 8
        );
        let slash0: IpCidr = "10.0.0.1/0".parse().unwrap();
        let m = address_message(Action::Add, 1, 2, &slash0);
        assert_eq!(&m[m.len() - 4..], &[255, 255, 255, 255]);
    }

    #[test]
    fn default_route_bytes() {
        let r = Route::default_via(Ipv4Addr::new(10, 0, 2, 2).into(), Proto::Dhcp);
        let got = route_message(Action::Add, 9, 4, &r);
        let mut want = Vec::new();
        want.extend_from_slice(&ne32(16 + 12 + 8 + 8));
        want.extend_from_slice(&ne16(RTM_NEWROUTE));
        want.extend_from_slice(&ne16(0x1 | 0x4 | 0x400 | 0x100));
        want.extend_from_slice(&ne32(9));
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&[2, 0, 0, 0, 254, 16, 0, 1]);
        want.extend_from_slice(&ne32(0));
        want.extend_from_slice(&ne16(8));
        want.extend_from_slice(&ne16(RTA_GATEWAY));
        want.extend_from_slice(&[10, 0, 2, 2]);
        want.extend_from_slice(&ne16(8));
        want.extend_from_slice(&ne16(RTA_OIF));
        want.extend_from_slice(&ne32(4));
        assert_eq!(got, want);

        let host = Route::on_link_host(Ipv4Addr::new(10, 9, 9, 1).into(), Proto::Static);
        let m = route_message(Action::Delete, 1, 4, &host);
        assert_eq!(&m[16..24], &[2, 32, 0, 0, 254, 4, RT_SCOPE_NOWHERE, 1]);
        // The first attribute, right after the 12-byte rtmsg, is the destination.
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), RTA_DST);
        assert_eq!(&m[32..36], &[10, 9, 9, 1]);

        let boot = route_message(Action::Add, 1, 4, &Route::dhcp_bootstrap());
        assert_eq!(&boot[16..24], &[2, 0, 0, 0, 254, 16, RT_SCOPE_LINK, 1]);
        assert_eq!(u16::from_ne_bytes([boot[38], boot[39]]), RTA_PRIORITY);
        assert_eq!(&boot[40..44], &ne32(u32::MAX));
    }

    fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&ne32((16 + payload.len()) as u32));
        m.extend_from_slice(&ne16(kind));
        m.extend_from_slice(&ne16(0));
        m.extend_from_slice(&ne32(seq));
        m.extend_from_slice(&ne32(0));
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn acks() {
        let ok = nlmsg(NLMSG_ERROR, 5, &ne32(0));
        assert_eq!(parse_ack(&ok, 5), Some(Ok(())));
        assert_eq!(parse_ack(&ok, 6), None);
        let eperm = nlmsg(NLMSG_ERROR, 5, &(-1i32).to_ne_bytes());
        assert_eq!(parse_ack(&eperm, 5), Some(Err(1)));
        // An unrelated message first, then the ack.
        let mut two = nlmsg(RTM_NEWADDR, 5, &[0; 8]);
        two.extend_from_slice(&nlmsg(NLMSG_ERROR, 5, &(-17i32).to_ne_bytes()));
        assert_eq!(parse_ack(&two, 5), Some(Err(17)));
        // Malformed: never a panic, never a false ack.
        for len in 0..ok.len() {
            assert_eq!(parse_ack(&ok[..len], 5), None);
        }
        let mut lying = ok.clone();
        lying[0..4].copy_from_slice(&ne32(4));
        assert_eq!(parse_ack(&lying, 5), None);
        lying[0..4].copy_from_slice(&ne32(1000));
        assert_eq!(parse_ack(&lying, 5), None);
    }
}
