//! The init's network configuration against a real kernel: each test makes two network
//! namespaces joined by a veth pair, runs a small DHCP server written here (independently of
//! the client's packet code, so a shared encoding bug cannot cancel out) on the server side,
//! and the client on a thread that entered the client namespace, then checks with `ip` what
//! the kernel ended up with. Needs root; without it the tests fail rather than skip.
//!
//! The client runs in this process rather than as a subprocess so it is always the code just
//! built (a filtered `cargo test --test` does not rebuild examples). Its thread also mounts a
//! private sysfs, since the host's /sys lists the host's interfaces whatever the thread's
//! network namespace.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "net_namespace/lab.rs"]
mod lab;
#[path = "net_namespace/server.rs"]
mod server;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use keel_contract::profile::{Network, NetworkMode};
use keel_init::net::{self, NetError};

use lab::{Lab, ip};
use server::{Behavior, LEASED_IP, SERVER_IP, Seen, Server};

const DISCOVER: u8 = 1;
const REQUEST: u8 = 3;

fn addrs(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|a| a.parse().unwrap()).collect()
}

fn dhcp_profile(lab: &Lab, dns: &[&str]) -> Network {
    Network {
        mode: NetworkMode::Dhcp,
        interface: Some(lab.client_if.parse().unwrap()),
        addresses: Vec::new(),
        gateway: None,
        dns: addrs(dns),
        links: Vec::new(),
    }
}

fn static_profile(lab: &Lab, cidrs: &[&str], gateway: Option<&str>, dns: &[&str]) -> Network {
    Network {
        mode: NetworkMode::Static,
        interface: Some(lab.client_if.parse().unwrap()),
        addresses: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        gateway: gateway.map(|g| g.parse().unwrap()),
        dns: addrs(dns),
        links: Vec::new(),
    }
}

fn kinds(seen: &[Seen]) -> Vec<u8> {
    seen.iter().map(|s| s.kind).collect()
}

/// The client's IPv4 addresses and routes as `ip` shows them.
fn client_v4(lab: &Lab) -> (String, String) {
    (
        lab.client_ip(&["-4", "addr", "show", "dev", &lab.client_if]),
        lab.client_ip(&["-4", "route"]),
    )
}

#[test]
fn dhcp_lease_is_applied_and_renewed() {
    let lab = Lab::new("a");
    let server = Server::start(
        &lab,
        Behavior {
            lease: 60,
            t1: 2,
            t2: 50,
            ..Behavior::default()
        },
    );
    let (network, options) = (dhcp_profile(&lab, &["10.77.0.200"]), lab.options(30));
    let (result, log) = lab.in_client(move |log| {
        let mut state = net::configure_with(&network, &options, log)?;
        let first = state.clone();
        net::maintain_lease(&mut state, log)?;
        Ok::<_, NetError>((first, state))
    });
    let (first, renewed) = result.unwrap_or_else(|e| panic!("{e}\n{log}"));

    let (addr, routes) = client_v4(&lab);
    assert!(
        addr.contains("inet 10.77.0.50/24 brd 10.77.0.255"),
        "{addr}"
    );
    assert!(
        routes.contains(&format!(
            "default via 10.77.0.1 dev {} proto dhcp",
            lab.client_if
        )),
        "{routes}"
    );
    assert!(
        !routes.contains("4294967295"),
        "bootstrap route left behind: {routes}"
    );
    let lo = lab.client_ip(&["link", "show", "lo"]);
    assert!(lo.contains(",UP"), "lo is not up: {lo}");
    let link = lab.client_ip(&["link", "show", "dev", &lab.client_if]);
    assert!(link.contains("mtu 1400"), "DHCP MTU not applied: {link}");
    assert_eq!(
        std::fs::read_to_string(lab.resolv()).unwrap(),
        "# Written by keel-init from the node profile and DHCP.\n\
         search test.internal\n\
         nameserver 10.77.0.200\n\
         nameserver 10.77.0.53\n\
         nameserver 10.77.0.54\n"
    );

    assert_eq!(first.interface, lab.client_if);
    assert_eq!(first.addresses, ["10.77.0.50/24".parse().unwrap()]);
    assert_eq!(first.gateway, Some("10.77.0.1".parse().unwrap()));
    assert_eq!(
        first.dns,
        addrs(&["10.77.0.200", "10.77.0.53", "10.77.0.54"])
    );
    assert_eq!(first.search.as_deref(), Some("test.internal"));
    assert_eq!(
        first.dhcp_hostname.as_ref().map(|h| h.as_str()),
        Some("probe-node")
    );
    let lease = first.lease.as_ref().unwrap();
    assert_eq!(lease.server, SERVER_IP);
    assert_eq!(lease.duration, Some(Duration::from_secs(60)));
    assert_eq!(lease.t1, Duration::from_secs(2));
    let again = renewed.lease.as_ref().unwrap();
    assert!(again.obtained > lease.obtained, "not renewed:\n{log}");
    assert_eq!(renewed.addresses, first.addresses);

    let seen = server.seen();
    assert_eq!(kinds(&seen), [DISCOVER, REQUEST, REQUEST], "{seen:#?}");
    let mac = first.mac.unwrap().0;
    for s in &seen {
        assert_eq!(s.chaddr, mac);
        assert_eq!(
            s.client_id.as_deref(),
            Some(&[&[1u8][..], &mac].concat()[..])
        );
    }
    let (discover, select, renew) = (&seen[0], &seen[1], &seen[2]);
    assert!(discover.broadcast_flag && !discover.unicast);
    assert_eq!(select.requested, Some(LEASED_IP));
    assert_eq!(select.server_id, Some(SERVER_IP));
    assert_eq!(select.ciaddr, Ipv4Addr::UNSPECIFIED);
    // RENEWING: unicast to the server, the address in ciaddr, no options 50 and 54.
    assert!(renew.unicast && !renew.broadcast_flag, "{renew:?}");
    assert_eq!(renew.ciaddr, LEASED_IP);
    assert_eq!((renew.requested, renew.server_id), (None, None));
}

#[test]
fn dhcp_ignores_a_foreign_offer_and_restarts_after_nak() {
    let lab = Lab::new("b");
    let server = Server::start(
        &lab,
        Behavior {
            decoy_offer: true,
            nak_first_request: true,
            ..Behavior::default()
        },
    );
    let (network, options) = (dhcp_profile(&lab, &[]), lab.options(30));
    let (result, log) = lab.configure(network, options);
    let state = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(state.addresses, ["10.77.0.50/24".parse().unwrap()]);
    assert!(log.contains("NAK from 10.77.0.1: nope"), "{log}");
    let (addr, _) = client_v4(&lab);
    assert!(
        addr.contains("inet 10.77.0.50/24") && !addr.contains("10.77.0.99"),
        "{addr}"
    );
    assert_eq!(
        kinds(&server.seen()),
        [DISCOVER, REQUEST, DISCOVER, REQUEST]
    );
}

#[test]
fn dhcp_gives_the_address_up_on_a_renewal_nak_and_gets_a_new_lease() {
    let lab = Lab::new("h");
    let server = Server::start(
        &lab,
        Behavior {
            lease: 60,
            t1: 1,
            t2: 50,
            nak_first_renewal: true,
            ..Behavior::default()
        },
    );
    let (network, options) = (dhcp_profile(&lab, &[]), lab.options(30));
    let ns = lab.client_ns.clone();
    let dev = lab.client_if.clone();
    let (result, log) = lab.in_client(move |log| {
        let mut state = net::configure_with(&network, &options, log)?;
        net::maintain_lease(&mut state, log)?;
        let after_nak = (
            state.clone(),
            ip(&["-n", &ns, "-4", "addr", "show", "dev", &dev]),
        );
        net::maintain_lease(&mut state, log)?;
        Ok::<_, NetError>((after_nak, state))
    });
    let ((nakked, addr_after_nak), state) = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(
        nakked.lease.is_none() && nakked.addresses.is_empty(),
        "{nakked:?}"
    );
    assert!(!addr_after_nak.contains("10.77.0.50"), "{addr_after_nak}");
    assert!(
        log.contains("DHCP server refused 10.77.0.50: nope"),
        "{log}"
    );
    assert_eq!(state.addresses, ["10.77.0.50/24".parse().unwrap()]);
    let (addr, routes) = client_v4(&lab);
    assert!(addr.contains("inet 10.77.0.50/24"), "{addr}");
    assert!(routes.contains("default via 10.77.0.1"), "{routes}");
    assert_eq!(
        kinds(&server.seen()),
        [DISCOVER, REQUEST, REQUEST, DISCOVER, REQUEST]
    );
}

#[test]
fn dhcp_rebinds_by_broadcast_when_the_server_ignores_unicast() {
    let lab = Lab::new("i");
    let server = Server::start(
        &lab,
        Behavior {
            lease: 30,
            t1: 1,
            t2: 4,
            ignore_unicast: true,
            ..Behavior::default()
        },
    );
    let (network, options) = (dhcp_profile(&lab, &[]), lab.options(30));
    let (result, log) = lab.in_client(move |log| {
        let mut state = net::configure_with(&network, &options, log)?;
        let first = state.lease.clone();
        // Renewing gets no answer until T2; the next step rebinds.
        for _ in 0..3 {
            net::maintain_lease(&mut state, log)?;
            if state.lease.as_ref().map(|l| l.obtained) != first.as_ref().map(|l| l.obtained) {
                break;
            }
        }
        Ok::<_, NetError>((first, state))
    });
    let (first, state) = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (a, b) = (first.unwrap(), state.lease.unwrap());
    assert!(b.obtained > a.obtained, "not rebound:\n{log}");
    assert!(log.contains("rebinding 10.77.0.50"), "{log}");
    let seen = server.seen();
    let renewals: Vec<&Seen> = seen.iter().filter(|s| !s.ciaddr.is_unspecified()).collect();
    assert!(renewals.len() >= 2, "{seen:#?}");
    assert!(
        renewals[0].unicast,
        "RENEWING goes to the server: {seen:#?}"
    );
    let last = renewals.last().unwrap();
    assert!(!last.unicast, "REBINDING is broadcast: {seen:#?}");
    assert_eq!((last.requested, last.server_id), (None, None));
}

#[test]
fn dhcp_works_with_strict_reverse_path_filtering() {
    let lab = Lab::new("z");
    for conf in ["all", "default", lab.client_if.as_str()] {
        let key = format!("net.ipv4.conf.{conf}.rp_filter=1");
        ip(&["netns", "exec", &lab.client_ns, "sysctl", "-qw", &key]);
    }
    let _server = Server::start(&lab, Behavior::default());
    let (network, options) = (dhcp_profile(&lab, &[]), lab.options(15));
    let (result, log) = lab.configure(network, options);
    let state = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(state.addresses, ["10.77.0.50/24".parse().unwrap()]);
    let (_, routes) = client_v4(&lab);
    assert!(
        !routes.contains("4294967295"),
        "bootstrap route left behind: {routes}"
    );
}

#[test]
fn dhcp_without_a_server_times_out_with_a_clear_error() {
    let lab = Lab::new("c");
    let (network, options) = (dhcp_profile(&lab, &[]), lab.options(3));
    let (result, log) = lab.configure(network, options);
    let err = result.unwrap_err();
    assert!(
        matches!(err, NetError::DhcpTimeout { secs: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "DHCP on {}: no lease after 3 s (no OFFER received)",
            lab.client_if
        )
    );
    assert!(log.contains("DISCOVER"), "{log}");
    assert!(!lab.resolv().exists());
    let (_, routes) = client_v4(&lab);
    assert!(
        !routes.contains("4294967295"),
        "bootstrap route left behind: {routes}"
    );
}

#[test]
fn static_ipv4_and_ipv6_addresses_and_gateway() {
    let lab = Lab::new("d");
    let network = static_profile(
        &lab,
        &["10.78.0.5/24", "fd00:78::5/64"],
        Some("10.78.0.1"),
        &["10.78.0.53", "fd00:78::53"],
    );
    let (result, log) = lab.configure(network, lab.options(1));
    let state = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(state.lease.is_none());
    let (v4, routes) = client_v4(&lab);
    assert!(v4.contains("inet 10.78.0.5/24 brd 10.78.0.255"), "{v4}");
    let v6 = lab.client_ip(&["-6", "addr", "show", "dev", &lab.client_if]);
    assert!(v6.contains("inet6 fd00:78::5/64"), "{v6}");
    assert!(
        routes.contains(&format!(
            "default via 10.78.0.1 dev {} proto static",
            lab.client_if
        )),
        "{routes}"
    );
    assert_eq!(
        std::fs::read_to_string(lab.resolv()).unwrap(),
        "# Written by keel-init from the node profile and DHCP.\n\
         nameserver 10.78.0.53\n\
         nameserver fd00:78::53\n"
    );
    // Applying the same profile again (a restarted init) is not an error.
    let network = static_profile(&lab, &["10.78.0.5/24"], Some("10.78.0.1"), &[]);
    let (again, log) = lab.configure(network, lab.options(1));
    again.unwrap_or_else(|e| panic!("{e}\n{log}"));
}

#[test]
fn static_ipv6_gateway_and_a_gateway_outside_the_prefix() {
    let lab = Lab::new("e");
    let network = static_profile(&lab, &["fd00:79::5/64"], Some("fd00:79::1"), &[]);
    let (result, log) = lab.configure(network, lab.options(1));
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let route = lab.client_ip(&["-6", "route", "show", "default"]);
    assert!(route.contains("default via fd00:79::1"), "{route}");

    let lab = Lab::new("f");
    let network = static_profile(&lab, &["10.79.0.5/32"], Some("10.79.1.1"), &[]);
    let (result, log) = lab.configure(network, lab.options(1));
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (_, routes) = client_v4(&lab);
    assert!(routes.contains("default via 10.79.1.1"), "{routes}");
    assert!(
        routes.contains("10.79.1.1 dev") && routes.contains("scope link"),
        "{routes}"
    );
}

#[test]
fn interface_selection_errors_name_what_is_there() {
    let lab = Lab::new("g");
    let mut network = dhcp_profile(&lab, &[]);
    network.interface = Some("nosuch0".parse().unwrap());
    let (result, _) = lab.configure(network.clone(), lab.options(1));
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("interface nosuch0") && err.contains(&format!("lo, {}", lab.client_if)),
        "{err}"
    );
    // A veth has no `device` link, so it is not picked as the node's Ethernet interface.
    network.interface = None;
    let (result, _) = lab.configure(network, lab.options(1));
    let err = result.unwrap_err();
    assert!(matches!(err, NetError::NoEthernet { .. }), "{err}");
}

/// A link (`[[node.network.links]]`) gets its static address and no default route; the
/// virtual IP is added as /32 and announced with gratuitous ARP, which a neighbour that
/// accepts them (`arp_accept`) files under the link's MAC; released, it is gone.
#[test]
fn a_link_and_its_virtual_ip_are_announced_and_released() {
    use keel_contract::profile::StaticLink;
    use keel_init::net::vip::{self, Step};
    let lab = Lab::new("v");
    let accept = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, "sysctl", "-qw"])
        .arg(format!("net.ipv4.conf.{}.arp_accept=1", lab.server_if))
        .status()
        .unwrap();
    assert!(accept.success());
    let link = StaticLink {
        interface: lab.client_if.parse().unwrap(),
        addresses: vec!["10.79.0.5/24".parse().unwrap()],
        vip: Some("10.79.0.10".parse().unwrap()),
    };
    let (iface, options) = (lab.client_if.clone(), lab.options(1));
    let (result, log) = lab.in_client(move |log| -> Result<(), NetError> {
        net::links::configure(std::slice::from_ref(&link), &options, log)?;
        vip::apply(Step::Take, &iface, "10.79.0.10".parse().unwrap(), log)
    });
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(vip::held(), Some("10.79.0.10".parse().unwrap()));
    let (v4, routes) = client_v4(&lab);
    assert!(v4.contains("inet 10.79.0.5/24"), "{v4}");
    assert!(v4.contains("inet 10.79.0.10/32"), "{v4}");
    assert!(
        !routes.contains("default"),
        "a link adds no default route: {routes}"
    );
    let mac = lab.client_ip(&["link", "show", "dev", &lab.client_if]);
    let mac = mac.split("link/ether ").nth(1).unwrap()[..17].to_owned();
    let neigh = ip(&["-n", &lab.server_ns, "neigh", "show", "10.79.0.10"]);
    assert!(
        neigh.contains(&mac),
        "the neighbour learnt {mac}: {neigh:?}"
    );

    let iface = lab.client_if.clone();
    let (result, log) = lab.in_client(move |log| {
        vip::apply(Step::Release, &iface, "10.79.0.10".parse().unwrap(), log)
    });
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(vip::held(), None);
    let (v4, _) = client_v4(&lab);
    assert!(!v4.contains("10.79.0.10"), "{v4}");
}
