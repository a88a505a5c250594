//! The few raw libc calls the network code needs, each behind a safe function that reports
//! which call failed on which interface.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::NetError;

const ARPHRD_ETHER: u16 = 1;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn sys_err<'a>(op: &'a str, iface: &'a str) -> impl FnOnce(io::Error) -> NetError + 'a {
    move |source| NetError::sys(op, iface, source)
}

/// `ifreq` for `name`; interface names longer than IFNAMSIZ-1 are rejected here rather than
/// silently truncated onto another interface's name.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of integers, sockaddrs and a
    // pointer); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor we own.
    let fd = check(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs one interface ioctl on a throwaway datagram socket (the kernel needs some socket of the
/// right family, not a particular one).
fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    // SAFETY: every request passed here reads or writes a `struct ifreq`, which `req` is.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) })?;
    Ok(())
}

/// Sets IFF_UP (SIOCGIFFLAGS then SIOCSIFFLAGS), leaving the other flags as they are.
pub fn set_up(name: &str) -> Result<(), NetError> {
    let mut req = ifreq(name).map_err(sys_err("SIOCGIFFLAGS", name))?;
    ioctl(libc::SIOCGIFFLAGS, &mut req).map_err(sys_err("SIOCGIFFLAGS", name))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut req).map_err(sys_err("SIOCSIFFLAGS", name))
}

pub fn ifindex(name: &str) -> Result<u32, NetError> {
    let mut req = ifreq(name).map_err(sys_err("SIOCGIFINDEX", name))?;
    ioctl(libc::SIOCGIFINDEX, &mut req).map_err(sys_err("SIOCGIFINDEX", name))?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    Ok(index as u32)
}

/// The hardware address, or `None` when the interface is not Ethernet-like (no 6-byte MAC).
pub fn mac(name: &str) -> Result<Option<[u8; 6]>, NetError> {
    let mut req = ifreq(name).map_err(sys_err("SIOCGIFHWADDR", name))?;
    ioctl(libc::SIOCGIFHWADDR, &mut req).map_err(sys_err("SIOCGIFHWADDR", name))?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let addr = unsafe { req.ifr_ifru.ifru_hwaddr };
    if addr.sa_family != ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(addr.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok(Some(mac))
}

pub fn set_mtu(name: &str, mtu: u16) -> Result<(), NetError> {
    let mut req = ifreq(name).map_err(sys_err("SIOCSIFMTU", name))?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ioctl(libc::SIOCSIFMTU, &mut req).map_err(sys_err("SIOCSIFMTU", name))
}

pub(super) fn set_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: &[u8],
) -> io::Result<()> {
    // SAFETY: val is a live buffer of the given length for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The DHCP client's socket: UDP 0.0.0.0:68 tied to one interface, allowed to broadcast.
/// SO_BINDTODEVICE makes sends leave through `name` before it has any address or route, and
/// keeps replies meant for other interfaces out.
pub fn dhcp_socket(name: &str) -> Result<UdpSocket, NetError> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP)
        .map_err(sys_err("socket(AF_INET, SOCK_DGRAM)", name))?;
    let one = 1 as libc::c_int;
    let one = one.to_ne_bytes();
    // Renewal threads and a restarted exchange rebind port 68 right after closing it.
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)
        .map_err(sys_err("SO_REUSEADDR", name))?;
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one)
        .map_err(sys_err("SO_BROADCAST", name))?;
    set_opt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_BINDTODEVICE,
        name.as_bytes(),
    )
    .map_err(sys_err("SO_BINDTODEVICE", name))?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: super::dhcp::packet::CLIENT_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in and the length matches it.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map_err(sys_err("bind(0.0.0.0:68)", name))?;
    Ok(UdpSocket::from(fd))
}

/// A raw packet socket for sending whole Ethernet frames (gratuitous ARP).
pub(super) fn packet_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
}

pub(super) fn netlink_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)
}

/// A random 32-bit value for DHCP transaction ids. They only need to differ between clients
/// and attempts, so when the kernel's pool is not ready yet (early boot) time and pid do.
pub fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: buf is a live, writable 4-byte buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == 4 {
        return u32::from_ne_bytes(buf);
    }
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && std::io::Read::read_exact(&mut f, &mut buf).is_ok()
    {
        return u32::from_ne_bytes(buf);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// sethostname(2).
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}
