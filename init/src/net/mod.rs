//! The node's network configuration from `[node.network]`: pick the interface, bring it up,
//! then either apply static addresses or get a DHCP lease (IPv4), install the default route and
//! write resolv.conf. Only syscalls: the node has no `ip`, no dhclient and no udev.
//!
//! [`configure`] does the first configuration and returns a [`NetState`]; with DHCP the caller
//! then runs [`renew_forever`] on a thread to keep the lease.

pub mod dhcp;
pub mod iface;
pub mod links;
pub mod netlink;
pub mod resolv;
mod sys;
pub mod vip;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keel_contract::profile::{Hostname, IpCidr, Network, NetworkMode};
use thiserror::Error;

use dhcp::{Iface, Lease, Renewal};
use netlink::{Action, Proto, Route};

#[derive(Debug, Error)]
pub enum NetError {
    /// A syscall, ioctl or netlink request failed: `SIOCSIFFLAGS on eth0: ...`.
    #[error("{op} on {iface}: {source}")]
    Sys {
        op: String,
        iface: String,
        source: io::Error,
    },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "interface {name} (from node.network.interface) not found in {dir}; present: {present}"
    )]
    NotFound {
        name: String,
        dir: PathBuf,
        present: String,
    },
    #[error("no wired Ethernet interface in {dir}; present: {present}")]
    NoEthernet { dir: PathBuf, present: String },
    #[error("{iface} has no Ethernet MAC address; DHCP needs one")]
    NotEthernet { iface: String },
    #[error("no carrier on {iface} after {secs} s (cable unplugged or switch port down?)")]
    NoCarrier { iface: String, secs: u64 },
    #[error("DHCP on {iface}: no lease after {secs} s ({last})")]
    DhcpTimeout {
        iface: String,
        secs: u64,
        last: String,
    },
    #[error("static network mode on {iface} needs at least one address")]
    NoStaticAddress { iface: String },
}

impl NetError {
    fn sys(op: &str, iface: &str, source: io::Error) -> NetError {
        NetError::Sys {
            op: op.to_owned(),
            iface: iface.to_owned(),
            source,
        }
    }
}

/// An Ethernet address, shown as `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Where the network code reads and writes, and how long it waits. Tests point the paths away
/// from the host's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// The sysfs mount (`/sys`).
    pub sysfs: PathBuf,
    pub resolv_conf: PathBuf,
    pub carrier_timeout: Duration,
    /// For the first lease, and for each attempt to get a new one after losing it.
    pub dhcp_timeout: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            sysfs: PathBuf::from("/sys"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            carrier_timeout: Duration::from_secs(10),
            dhcp_timeout: Duration::from_secs(60),
        }
    }
}

/// The network as configured.
#[derive(Debug, Clone)]
pub struct NetState {
    pub interface: String,
    pub ifindex: u32,
    /// `None` for an interface without an Ethernet address (static mode only).
    pub mac: Option<Mac>,
    pub addresses: Vec<IpCidr>,
    pub gateway: Option<IpAddr>,
    /// As written to resolv.conf: the profile's, then the lease's.
    pub dns: Vec<IpAddr>,
    pub search: Option<String>,
    pub lease: Option<Lease>,
    /// The host name the DHCP server gave, if valid. Setting it is the caller's decision (the
    /// profile's `hostname` wins): see [`set_hostname`].
    pub dhcp_hostname: Option<Hostname>,
    /// `[[node.network.links]]` as configured (after the main interface).
    pub links: Vec<links::LinkState>,
    mode: NetworkMode,
    profile_dns: Vec<IpAddr>,
    options: NetOptions,
}

impl NetState {
    pub fn mode(&self) -> NetworkMode {
        self.mode
    }

    pub fn options(&self) -> &NetOptions {
        &self.options
    }

    /// Every address the node has, the links' first: the node advertises the first usable
    /// one (see `Network::links`).
    pub fn node_addresses(&self) -> Vec<IpAddr> {
        self.links
            .iter()
            .flat_map(|l| &l.addresses)
            .chain(&self.addresses)
            .map(|a| a.addr)
            .collect()
    }
}

/// [`configure_with`] with the real paths and default timeouts.
pub fn configure(net: &Network, log: &dyn Fn(&str)) -> Result<NetState, NetError> {
    configure_with(net, &NetOptions::default(), log)
}

pub fn configure_with(
    net: &Network,
    options: &NetOptions,
    log: &dyn Fn(&str),
) -> Result<NetState, NetError> {
    let name = iface::select(&options.sysfs, net.interface.as_deref())?;
    // The kernel gives lo 127.0.0.1/8 and ::1 itself once it is up.
    sys::set_up("lo")?;
    let ifindex = sys::ifindex(&name)?;
    let mac = sys::mac(&name)?.map(Mac);
    sys::set_up(&name)?;
    log(&format!(
        "network: {name} ({}) is up",
        mac.map_or_else(|| "no MAC".to_owned(), |m| m.to_string())
    ));
    let carrier = iface::wait_carrier(&options.sysfs, &name, options.carrier_timeout);
    let mut state = NetState {
        interface: name,
        ifindex,
        mac,
        addresses: Vec::new(),
        gateway: None,
        dns: Vec::new(),
        search: None,
        lease: None,
        dhcp_hostname: None,
        links: Vec::new(),
        mode: net.mode,
        profile_dns: net.dns.clone(),
        options: options.clone(),
    };
    match net.mode {
        NetworkMode::Static => {
            if !carrier {
                log(&format!(
                    "network: no carrier on {} yet; applying the static addresses anyway",
                    state.interface
                ));
            }
            apply_static(&mut state, net, log)?;
        }
        NetworkMode::Dhcp => {
            if !carrier {
                return Err(NetError::NoCarrier {
                    iface: state.interface,
                    secs: options.carrier_timeout.as_secs(),
                });
            }
            let lease = acquire(&state, log)?;
            apply_lease(&mut state, lease, log)?;
        }
    }
    Ok(state)
}

fn dhcp_iface(state: &NetState) -> Result<Iface<'_>, NetError> {
    let mac = state.mac.ok_or_else(|| NetError::NotEthernet {
        iface: state.interface.clone(),
    })?;
    Ok(Iface {
        name: &state.interface,
        mac: mac.0,
    })
}

/// Gets a new lease while the interface has no address, with [`Route::dhcp_bootstrap`] in
/// place so reverse-path filtering cannot drop the server's answers. The route is a
/// workaround only: failing to add or remove it is logged, not fatal.
fn acquire(state: &NetState, log: &dyn Fn(&str)) -> Result<Lease, NetError> {
    let iface = dhcp_iface(state)?;
    let boot = Route::dhcp_bootstrap();
    let added = netlink::route(Action::Add, &state.interface, state.ifindex, &boot);
    if let Err(e) = &added {
        log(&format!("network: {e}"));
    }
    let lease = dhcp::acquire(iface, state.options.dhcp_timeout, log);
    if added.is_ok()
        && let Err(e) = netlink::route(Action::Delete, &state.interface, state.ifindex, &boot)
    {
        log(&format!("network: {e}"));
    }
    lease
}

/// Whether `ip` lies inside `cidr`'s subnet.
pub fn in_subnet(cidr: &IpCidr, ip: IpAddr) -> bool {
    match (cidr.addr, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(cidr.prefix.min(32)))
                .unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(cidr.prefix.min(128)))
                .unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// Installs the default route through `gateway`, first making the gateway reachable on the
/// link when no address's subnet holds it (a /32 lease, or a gateway outside the prefix).
fn add_default_route(
    state: &NetState,
    addresses: &[IpCidr],
    gateway: IpAddr,
    proto: Proto,
) -> Result<(), NetError> {
    if !addresses.iter().any(|a| in_subnet(a, gateway)) {
        let host = Route::on_link_host(gateway, proto);
        netlink::route(Action::Add, &state.interface, state.ifindex, &host)?;
    }
    let default = Route::default_via(gateway, proto);
    netlink::route(Action::Add, &state.interface, state.ifindex, &default)
}

fn apply_static(state: &mut NetState, net: &Network, log: &dyn Fn(&str)) -> Result<(), NetError> {
    if net.addresses.is_empty() {
        return Err(NetError::NoStaticAddress {
            iface: state.interface.clone(),
        });
    }
    for a in &net.addresses {
        netlink::address(Action::Add, &state.interface, state.ifindex, a)?;
    }
    if let Some(gw) = net.gateway {
        add_default_route(state, &net.addresses, gw, Proto::Static)?;
    }
    state.addresses = net.addresses.clone();
    state.gateway = net.gateway;
    let list = |v: &[IpCidr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    log(&format!(
        "network: {} has {}{}",
        state.interface,
        list(&state.addresses).join(", "),
        state
            .gateway
            .map(|g| format!(", gateway {g}"))
            .unwrap_or_default()
    ));
    update_resolv(state, None, log)
}

/// The nameservers for resolv.conf: the profile's first, since a server the operator named
/// must not be pushed out by the three-server limit, then the lease's.
pub fn merge_dns(profile: &[IpAddr], lease: &[IpAddr]) -> Vec<IpAddr> {
    profile.iter().chain(lease).copied().collect()
}

fn update_resolv(
    state: &mut NetState,
    lease: Option<&Lease>,
    log: &dyn Fn(&str),
) -> Result<(), NetError> {
    let from_lease: Vec<IpAddr> =
        lease.map_or_else(Vec::new, |l| l.dns.iter().map(|a| IpAddr::V4(*a)).collect());
    let (dns, dropped) = resolv::pick(&merge_dns(&state.profile_dns, &from_lease));
    if !dropped.is_empty() {
        let d: Vec<String> = dropped.iter().map(IpAddr::to_string).collect();
        log(&format!(
            "network: resolv.conf holds {} nameservers; not using {}",
            resolv::MAX_NAMESERVERS,
            d.join(", ")
        ));
    }
    let search = lease.and_then(|l| l.domain.clone());
    let text = resolv::render(&dns, search.as_deref());
    resolv::write(&state.options.resolv_conf, &text)?;
    state.dns = dns;
    state.search = search;
    Ok(())
}

/// Puts `lease` on the interface: address (replacing a different previous one), MTU, default
/// route, resolv.conf. Safe to repeat with the same lease, which every renewal does.
fn apply_lease(state: &mut NetState, lease: Lease, log: &dyn Fn(&str)) -> Result<(), NetError> {
    let cidr = lease.cidr();
    if let Some(old) = &state.lease
        && old.cidr() != cidr
    {
        release_address(state, log);
    }
    if let Some(mtu) = lease.mtu
        && mtu >= 576
        && let Err(e) = sys::set_mtu(&state.interface, mtu)
    {
        log(&format!("network: DHCP MTU {mtu} not applied: {e}"));
    }
    netlink::address(Action::Add, &state.interface, state.ifindex, &cidr)?;
    let gateway = lease.routers.first().map(|r| IpAddr::V4(*r));
    if let Some(gw) = gateway {
        add_default_route(state, &[cidr], gw, Proto::Dhcp)?;
    }
    state.addresses = vec![cidr];
    state.gateway = gateway;
    state.dhcp_hostname = lease
        .hostname
        .as_deref()
        .and_then(|h| match h.parse::<Hostname>() {
            Ok(h) => Some(h),
            Err(e) => {
                log(&format!("network: ignoring the DHCP host name: {e}"));
                None
            }
        });
    update_resolv(state, Some(&lease), log)?;
    log(&format!(
        "network: DHCP lease {cidr} on {} from {}{}, {}",
        state.interface,
        lease.server,
        gateway
            .map(|g| format!(", gateway {g}"))
            .unwrap_or_default(),
        match lease.duration {
            Some(d) => format!(
                "for {} s (renewal in {} s)",
                d.as_secs(),
                lease.t1.as_secs()
            ),
            None => "never expires".to_owned(),
        }
    ));
    state.lease = Some(lease);
    Ok(())
}

/// Gives the leased address up (NAK, expiry, or a new address). The kernel drops the routes
/// through it with it. Failures are only logged: the next lease is applied either way.
fn release_address(state: &mut NetState, log: &dyn Fn(&str)) {
    if let Some(old) = state.lease.take() {
        let cidr = old.cidr();
        if let Err(e) = netlink::address(Action::Delete, &state.interface, state.ifindex, &cidr) {
            log(&format!("network: {e}"));
        }
    }
    state.addresses.clear();
    state.gateway = None;
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// One step of keeping the lease: waits for the next timer, then renews (after T1), rebinds
/// (after T2) or, once the lease expired or was refused, gets a new one. Returns after each
/// attempt; call it in a loop ([`renew_forever`] does). Static configurations and infinite
/// leases just sleep.
pub fn maintain_lease(state: &mut NetState, log: &dyn Fn(&str)) -> Result<(), NetError> {
    const IDLE: Duration = Duration::from_secs(24 * 3600);
    if state.mode == NetworkMode::Static {
        std::thread::sleep(IDLE);
        return Ok(());
    }
    let Some(lease) = state.lease.clone() else {
        log(&format!(
            "network: no DHCP lease on {}; asking",
            state.interface
        ));
        let fresh = acquire(state, log)?;
        return apply_lease(state, fresh, log);
    };
    let Some(at) = lease.deadlines() else {
        std::thread::sleep(IDLE);
        return Ok(());
    };
    sleep_until(at.t1);
    let now = Instant::now();
    let iface = dhcp_iface(state)?;
    let outcome = if now < at.t2 {
        log(&format!(
            "network: renewing {} with {}",
            lease.address, lease.server
        ));
        dhcp::renew(iface, &lease, false, at.t2, log)?
    } else if now < at.expiry {
        log(&format!(
            "network: rebinding {} (no answer from {})",
            lease.address, lease.server
        ));
        dhcp::renew(iface, &lease, true, at.expiry, log)?
    } else {
        log(&format!("network: DHCP lease of {} expired", lease.address));
        release_address(state, log);
        return Ok(());
    };
    match outcome {
        Renewal::Acked(new) => apply_lease(state, new, log),
        Renewal::Nak(msg) => {
            log(&format!(
                "network: DHCP server refused {}: {}",
                lease.address,
                msg.as_deref().unwrap_or("no reason given")
            ));
            release_address(state, log);
            Ok(())
        }
        // The deadline passed: the next call moves on to rebinding or expiry.
        Renewal::NoAnswer => Ok(()),
    }
}

/// Keeps the DHCP lease for as long as the node runs; meant for its own thread. Errors are
/// logged and retried, never fatal: PID 1 must not stop because the network hiccupped.
pub fn renew_forever(mut state: NetState, log: &dyn Fn(&str)) -> ! {
    const RETRY: Duration = Duration::from_secs(10);
    loop {
        if let Err(e) = maintain_lease(&mut state, log) {
            log(&format!("network: {e}; retrying in {} s", RETRY.as_secs()));
            std::thread::sleep(RETRY);
        }
    }
}

/// sethostname(2), for a name from [`NetState::dhcp_hostname`] or the profile.
pub fn set_hostname(name: &Hostname) -> Result<(), NetError> {
    sys::set_hostname(name.as_str()).map_err(|e| NetError::sys("sethostname", name.as_str(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn subnets() {
        assert!(in_subnet(&cidr("10.0.2.15/24"), ip("10.0.2.2")));
        assert!(!in_subnet(&cidr("10.0.2.15/24"), ip("10.0.3.2")));
        assert!(!in_subnet(&cidr("10.0.2.15/32"), ip("10.0.2.1")));
        assert!(in_subnet(&cidr("10.0.2.15/0"), ip("192.0.2.1")));
        assert!(in_subnet(&cidr("fd00::2/64"), ip("fd00::1")));
        assert!(!in_subnet(&cidr("fd00::2/64"), ip("fd01::1")));
        assert!(in_subnet(&cidr("fd00::2/0"), ip("2001:db8::1")));
        assert!(!in_subnet(&cidr("10.0.2.15/24"), ip("fd00::1")));
    }

    #[test]
    fn dns_order_profile_first() {
        let merged = merge_dns(&[ip("10.9.9.9")], &[ip("1.1.1.1"), ip("10.9.9.9")]);
        assert_eq!(merged, [ip("10.9.9.9"), ip("1.1.1.1"), ip("10.9.9.9")]);
        assert_eq!(resolv::pick(&merged).0, [ip("10.9.9.9"), ip("1.1.1.1")]);
    }

    #[test]
    fn error_messages_name_the_call_and_interface() {
        let e = NetError::sys(
            "SIOCSIFADDR",
            "eth0",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert!(
            e.to_string()
                .starts_with("SIOCSIFADDR on eth0: Operation not permitted"),
            "{e}"
        );
        assert_eq!(
            Mac([0x52, 0x54, 0, 0xab, 1, 2]).to_string(),
            "52:54:00:ab:01:02"
        );
    }

    #[test]
    fn a_name_too_long_for_ifreq_is_an_error_not_a_truncation() {
        let e = sys::ifindex("an-interface-name-of-20").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SIOCGIFINDEX on an-interface-name-of-20"),
            "{e}"
        );
    }
}
