//! A virtual IP shared by the control planes on a link (`[[node.network.links]] vip`), as
//! Talos does it: the node whose etcd member is the raft leader holds the address, adds it to
//! the link and announces it with gratuitous ARP so the others' caches move to its MAC; a
//! node that stops being the leader (or whose etcd stops answering) drops it. etcd's
//! CheckQuorum makes a leader cut off from the majority step down within an election
//! timeout, so two holders overlap at most that long.
//!
//! [`decide`] is pure; [`run_forever`] polls the decision and applies it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use keel_contract::profile::IpCidr;

use super::{NetError, netlink, sys};

/// How often the holder is decided again: with etcd's 1 s election timeout, a new leader is
/// known within about two seconds of the old one's death, and holds the address one poll later.
pub const POLL: Duration = Duration::from_secs(1);
/// Gratuitous ARPs sent on taking the address (more than one: a frame can be lost).
const ANNOUNCEMENTS: usize = 3;

static HELD: Mutex<Option<IpAddr>> = Mutex::new(None);

/// The address this node holds now, for its status.
pub fn held() -> Option<IpAddr> {
    *HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What to do, from whether this node should hold the address and whether it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Take,
    Release,
    Keep,
}

/// `leader`: this node's etcd member is the leader (`None`: etcd did not answer, which
/// counts as not leading: a node that cannot reach its etcd must not keep the address).
pub fn decide(leader: Option<bool>, holding: bool) -> Step {
    match (leader.unwrap_or(false), holding) {
        (true, false) => Step::Take,
        (false, true) => Step::Release,
        _ => Step::Keep,
    }
}

/// A gratuitous ARP request for `ip` from `mac`: broadcast, sender and target address both
/// `ip` (RFC 5227's ARP announcement), padded to Ethernet's 60-byte minimum.
pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    frame.extend_from_slice(&[6, 4]);
    frame.extend_from_slice(&1u16.to_be_bytes()); // request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&ip.octets());
    frame.resize(60, 0);
    frame
}

fn send_announcements(
    iface: &str,
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
) -> Result<(), NetError> {
    let err = |e: std::io::Error| NetError::Sys {
        op: "gratuitous ARP".into(),
        iface: iface.to_owned(),
        source: e,
    };
    let socket = sys::packet_socket().map_err(err)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid before the fields are set.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = 0x0806u16.to_be();
    to.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = announcement(mac, ip);
    for _ in 0..ANNOUNCEMENTS {
        // SAFETY: frame and to live across the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Applies one step on `iface`: the address as /32 (it adds no route; the link's own
/// address already routes the subnet).
pub fn apply(step: Step, iface: &str, vip: Ipv4Addr, log: &dyn Fn(&str)) -> Result<(), NetError> {
    let cidr = IpCidr {
        addr: IpAddr::V4(vip),
        prefix: 32,
    };
    let ifindex = sys::ifindex(iface)?;
    match step {
        Step::Keep => return Ok(()),
        Step::Take => {
            netlink::address(netlink::Action::Add, iface, ifindex, &cidr)?;
            set_held(Some(IpAddr::V4(vip)));
            log(&format!(
                "vip: {vip} taken on {iface} (this node's etcd member leads)"
            ));
            if let Some(mac) = sys::mac(iface)? {
                send_announcements(iface, ifindex, mac, vip)?;
            }
        }
        Step::Release => {
            set_held(None);
            netlink::address(netlink::Action::Delete, iface, ifindex, &cidr)?;
            log(&format!(
                "vip: {vip} released on {iface} (no longer the etcd leader)"
            ));
        }
    }
    Ok(())
}

fn set_held(value: Option<IpAddr>) {
    *HELD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
}

/// Decides and applies forever. `leads` asks the local etcd (`None` when it does not answer).
/// Errors are logged and retried on the next poll: the address must follow the leader.
pub fn run_forever(
    iface: String,
    vip: Ipv4Addr,
    leads: &dyn Fn() -> Option<bool>,
    log: &dyn Fn(&str),
) -> ! {
    let mut last_error = String::new();
    loop {
        let step = decide(leads(), held().is_some());
        match apply(step, &iface, vip, log) {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    log(&format!("vip: {text}"));
                }
                // A failed take must not leave the node believing it holds the address.
                if step == Step::Take {
                    set_held(None);
                }
                last_error = text;
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_takes_and_others_release() {
        assert_eq!(decide(Some(true), false), Step::Take);
        assert_eq!(decide(Some(true), true), Step::Keep);
        assert_eq!(decide(Some(false), true), Step::Release);
        assert_eq!(decide(None, true), Step::Release, "no etcd answer: let go");
        assert_eq!(decide(None, false), Step::Keep);
    }

    #[test]
    fn an_announcement_is_an_arp_request_for_the_address_itself() {
        let mac = [0x52, 0x54, 0, 0x6b, 1, 2];
        let frame = announcement(mac, Ipv4Addr::new(10, 5, 0, 10));
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 1], "request");
        assert_eq!(&frame[22..28], &mac);
        assert_eq!(&frame[28..32], &[10, 5, 0, 10], "sender address");
        assert_eq!(&frame[38..42], &[10, 5, 0, 10], "target address");
    }
}
