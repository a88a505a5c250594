//! DHCP messages on the wire (RFC 2131, options from RFC 2132): pure encoding and decoding.
//! Everything that arrives from the network goes through [`Message::decode`], which must
//! reject any malformed packet with an error instead of panicking, since it runs in PID 1.

use std::net::Ipv4Addr;

use thiserror::Error;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// The fixed BOOTP header, before the magic cookie.
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// BOOTP relays and some servers drop messages shorter than the original BOOTP size.
const MIN_LEN: usize = 300;
const HTYPE_ETHERNET: u8 = 1;
const BROADCAST_FLAG: u16 = 0x8000;

/// Option codes used by the client.
pub mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN: u8 = 15;
    pub const MTU: u8 = 26;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMS: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_SIZE: u8 = 57;
    pub const T1: u8 = 58;
    pub const T2: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// The options a DISCOVER and REQUEST ask the server for.
pub const REQUESTED_PARAMS: [u8; 10] = [
    code::SUBNET_MASK,
    code::ROUTER,
    code::DNS,
    code::HOSTNAME,
    code::DOMAIN,
    code::MTU,
    code::LEASE_TIME,
    code::SERVER_ID,
    code::T1,
    code::T2,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request = 1,
    Reply = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("packet is {0} bytes, shorter than a DHCP header (240)")]
    Short(usize),
    #[error("unknown op {0}")]
    BadOp(u8),
    #[error("hardware type {htype} with address length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("missing DHCP magic cookie")]
    NoMagic,
    #[error("option {code} runs past the end of the packet")]
    Truncated { code: u8 },
    #[error("option {code} has invalid length {len}")]
    BadLength { code: u8, len: usize },
    #[error("option {code} has an invalid value")]
    BadValue { code: u8 },
}

/// The options this client understands. Unknown options are skipped when decoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub message_type: Option<MessageType>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub requested_ip: Option<Ipv4Addr>,
    /// Seconds; `u32::MAX` means infinite.
    pub lease_time: Option<u32>,
    pub server_id: Option<Ipv4Addr>,
    pub params: Vec<u8>,
    /// A server's explanation, usually sent with a NAK.
    pub message: Option<String>,
    pub max_size: Option<u16>,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
    pub client_id: Option<Vec<u8>>,
}

/// A DHCP message over Ethernet (the only hardware type the client supports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: Op,
    pub xid: u32,
    pub secs: u16,
    /// Asks the server to broadcast its reply: the client cannot receive unicast before it has
    /// an address, as it uses a plain UDP socket rather than a packet socket.
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub options: Options,
}

impl Message {
    /// A client message with every address zero and no options.
    pub fn client(xid: u32, mac: [u8; 6], kind: MessageType) -> Message {
        Message {
            op: Op::Request,
            xid,
            secs: 0,
            broadcast: false,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            options: Options {
                message_type: Some(kind),
                ..Options::default()
            },
        }
    }

    pub fn message_type(&self) -> Option<MessageType> {
        self.options.message_type
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_LEN);
        out.push(self.op as u8);
        out.push(HTYPE_ETHERNET);
        out.push(6); // hlen
        out.push(0); // hops
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        let flags = if self.broadcast { BROADCAST_FLAG } else { 0 };
        out.extend_from_slice(&flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.resize(HEADER_LEN, 0); // chaddr padding, sname, file
        out.extend_from_slice(&MAGIC);
        encode_options(&self.options, &mut out);
        out.push(code::END);
        if out.len() < MIN_LEN {
            out.resize(MIN_LEN, code::PAD);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        if buf.len() < HEADER_LEN + MAGIC.len() {
            return Err(DecodeError::Short(buf.len()));
        }
        let byte = |i: usize| buf.get(i).copied().unwrap_or(0);
        let u16_at = |i: usize| u16::from_be_bytes([byte(i), byte(i + 1)]);
        let ip_at = |i: usize| Ipv4Addr::new(byte(i), byte(i + 1), byte(i + 2), byte(i + 3));
        let op = match byte(0) {
            1 => Op::Request,
            2 => Op::Reply,
            other => return Err(DecodeError::BadOp(other)),
        };
        let (htype, hlen) = (byte(1), byte(2));
        if htype != HTYPE_ETHERNET || hlen != 6 {
            return Err(DecodeError::NotEthernet { htype, hlen });
        }
        if buf.get(HEADER_LEN..HEADER_LEN + 4) != Some(&MAGIC[..]) {
            return Err(DecodeError::NoMagic);
        }
        let mut chaddr = [0u8; 6];
        for (i, b) in chaddr.iter_mut().enumerate() {
            *b = byte(28 + i);
        }
        let mut raw = RawOptions::default();
        raw.scan(buf.get(HEADER_LEN + 4..).unwrap_or_default())?;
        // RFC 2131 section 4.1: overloaded options continue in `file`, then in `sname`.
        match raw.get(code::OVERLOAD) {
            None => {}
            Some([1]) => raw.scan(buf.get(108..236).unwrap_or_default())?,
            Some([2]) => raw.scan(buf.get(44..108).unwrap_or_default())?,
            Some([3]) => {
                raw.scan(buf.get(108..236).unwrap_or_default())?;
                raw.scan(buf.get(44..108).unwrap_or_default())?;
            }
            Some(v) if v.len() != 1 => {
                return Err(DecodeError::BadLength {
                    code: code::OVERLOAD,
                    len: v.len(),
                });
            }
            Some(_) => {
                return Err(DecodeError::BadValue {
                    code: code::OVERLOAD,
                });
            }
        }
        Ok(Message {
            op,
            xid: u32::from_be_bytes([byte(4), byte(5), byte(6), byte(7)]),
            secs: u16_at(8),
            broadcast: u16_at(10) & BROADCAST_FLAG != 0,
            ciaddr: ip_at(12),
            yiaddr: ip_at(16),
            siaddr: ip_at(20),
            giaddr: ip_at(24),
            chaddr,
            options: raw.typed()?,
        })
    }
}

fn encode_options(o: &Options, out: &mut Vec<u8>) {
    if let Some(t) = o.message_type {
        put(out, code::MESSAGE_TYPE, &[t as u8]);
    }
    if let Some(id) = &o.client_id {
        put(out, code::CLIENT_ID, id);
    }
    let ip = |out: &mut Vec<u8>, c, a: Option<Ipv4Addr>| {
        if let Some(a) = a {
            put(out, c, &a.octets());
        }
    };
    ip(out, code::REQUESTED_IP, o.requested_ip);
    ip(out, code::SERVER_ID, o.server_id);
    ip(out, code::SUBNET_MASK, o.subnet_mask);
    let list = |out: &mut Vec<u8>, c, l: &[Ipv4Addr]| {
        if !l.is_empty() {
            put(
                out,
                c,
                &l.iter().flat_map(|a| a.octets()).collect::<Vec<_>>(),
            );
        }
    };
    list(out, code::ROUTER, &o.routers);
    list(out, code::DNS, &o.dns);
    let text = |out: &mut Vec<u8>, c, s: &Option<String>| {
        if let Some(s) = s {
            put(out, c, s.as_bytes());
        }
    };
    text(out, code::HOSTNAME, &o.hostname);
    text(out, code::DOMAIN, &o.domain);
    text(out, code::MESSAGE, &o.message);
    let num = |out: &mut Vec<u8>, c, v: Option<u32>| {
        if let Some(v) = v {
            put(out, c, &v.to_be_bytes());
        }
    };
    num(out, code::LEASE_TIME, o.lease_time);
    num(out, code::T1, o.t1);
    num(out, code::T2, o.t2);
    if let Some(mtu) = o.mtu {
        put(out, code::MTU, &mtu.to_be_bytes());
    }
    if let Some(size) = o.max_size {
        put(out, code::MAX_SIZE, &size.to_be_bytes());
    }
    if !o.params.is_empty() {
        put(out, code::PARAMS, &o.params);
    }
}

/// Writes one option, split into several instances when longer than 255 bytes (RFC 3396).
fn put(out: &mut Vec<u8>, code: u8, data: &[u8]) {
    if data.is_empty() {
        out.extend_from_slice(&[code, 0]);
    }
    for chunk in data.chunks(255) {
        out.push(code);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// Options as (code, data), with repeated instances of one code concatenated (RFC 3396).
#[derive(Default)]
struct RawOptions(Vec<(u8, Vec<u8>)>);

impl RawOptions {
    fn scan(&mut self, area: &[u8]) -> Result<(), DecodeError> {
        let mut i = 0;
        while let Some(&c) = area.get(i) {
            match c {
                code::PAD => {
                    i += 1;
                    continue;
                }
                code::END => return Ok(()),
                _ => {}
            }
            let len = *area.get(i + 1).ok_or(DecodeError::Truncated { code: c })? as usize;
            let data = area
                .get(i + 2..i + 2 + len)
                .ok_or(DecodeError::Truncated { code: c })?;
            match self.0.iter_mut().find(|(k, _)| *k == c) {
                Some((_, v)) => v.extend_from_slice(data),
                None => self.0.push((c, data.to_vec())),
            }
            i += 2 + len;
        }
        // A missing END is tolerated: the option area simply ran to the end of the packet.
        Ok(())
    }

    fn get(&self, c: u8) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_slice())
    }

    fn typed(&self) -> Result<Options, DecodeError> {
        let mut o = Options::default();
        for (c, v) in &self.0 {
            let c = *c;
            match c {
                code::MESSAGE_TYPE => {
                    let [t] = fixed::<1>(c, v)?;
                    o.message_type =
                        Some(MessageType::from_u8(t).ok_or(DecodeError::BadValue { code: c })?);
                }
                code::SUBNET_MASK => {
                    let mask = Ipv4Addr::from(fixed::<4>(c, v)?);
                    if mask_prefix(mask).is_none() {
                        return Err(DecodeError::BadValue { code: c });
                    }
                    o.subnet_mask = Some(mask);
                }
                code::ROUTER => o.routers = addresses(c, v)?,
                code::DNS => o.dns = addresses(c, v)?,
                code::HOSTNAME => o.hostname = Some(text(c, v)?),
                code::DOMAIN => o.domain = Some(text(c, v)?),
                code::MESSAGE => o.message = Some(String::from_utf8_lossy(v).into_owned()),
                code::MTU => {
                    let mtu = u16::from_be_bytes(fixed::<2>(c, v)?);
                    // RFC 2132 section 5.1: the minimum legal value is 68.
                    if mtu < 68 {
                        return Err(DecodeError::BadValue { code: c });
                    }
                    o.mtu = Some(mtu);
                }
                code::MAX_SIZE => o.max_size = Some(u16::from_be_bytes(fixed::<2>(c, v)?)),
                code::REQUESTED_IP => o.requested_ip = Some(Ipv4Addr::from(fixed::<4>(c, v)?)),
                code::SERVER_ID => o.server_id = Some(Ipv4Addr::from(fixed::<4>(c, v)?)),
                code::LEASE_TIME => o.lease_time = Some(u32::from_be_bytes(fixed::<4>(c, v)?)),
                code::T1 => o.t1 = Some(u32::from_be_bytes(fixed::<4>(c, v)?)),
                code::T2 => o.t2 = Some(u32::from_be_bytes(fixed::<4>(c, v)?)),
                code::PARAMS => o.params = v.clone(),
                code::CLIENT_ID => o.client_id = Some(v.clone()),
                _ => {}
            }
        }
        Ok(o)
    }
}

fn fixed<const N: usize>(code: u8, v: &[u8]) -> Result<[u8; N], DecodeError> {
    v.try_into()
        .map_err(|_| DecodeError::BadLength { code, len: v.len() })
}

fn addresses(code: u8, v: &[u8]) -> Result<Vec<Ipv4Addr>, DecodeError> {
    if v.is_empty() || !v.len().is_multiple_of(4) {
        return Err(DecodeError::BadLength { code, len: v.len() });
    }
    Ok(v.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

/// Text options: some servers NUL-terminate them, which is dropped.
fn text(code: u8, v: &[u8]) -> Result<String, DecodeError> {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    let s = std::str::from_utf8(&v[..end]).map_err(|_| DecodeError::BadValue { code })?;
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err(DecodeError::BadValue { code });
    }
    Ok(s.to_owned())
}

/// The prefix length of a contiguous netmask; `None` for masks like 255.0.255.0.
pub fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
