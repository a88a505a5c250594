//! Runs the init's network configuration once, for manual checks against a real DHCP server or
//! inside a network namespace (`ip netns exec NS dhcp_probe ...`), without touching the host's
//! resolv.conf (the automated tests in `tests/net_namespace.rs` call the library directly):
//!
//! ```text
//! dhcp_probe --interface IF --resolv PATH [--sysfs DIR] [--dhcp-timeout S]
//!            [--carrier-timeout S] [--static CIDR]... [--gateway IP] [--dns IP]...
//!            [--renew-once]
//! ```
//!
//! Log lines go to stderr; the result goes to stdout as `key=value` lines. `--renew-once` then
//! waits for T1, renews, and prints `renewed=yes` once a new ACK was applied.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keel_contract::profile::{Network, NetworkMode};
use keel_init::net::{self, NetOptions, NetState};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dhcp_probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn value<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
    v.parse().map_err(|e| format!("{flag} {v:?}: {e}"))
}

fn run() -> Result<(), String> {
    let mut network = Network::default();
    let mut options = NetOptions {
        resolv_conf: PathBuf::new(),
        ..NetOptions::default()
    };
    let mut renew_once = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--interface" => network.interface = Some(value(&flag, args.next())?),
            "--resolv" => options.resolv_conf = value(&flag, args.next())?,
            "--sysfs" => options.sysfs = value(&flag, args.next())?,
            "--dhcp-timeout" => {
                options.dhcp_timeout = Duration::from_secs(value(&flag, args.next())?)
            }
            "--carrier-timeout" => {
                options.carrier_timeout = Duration::from_secs(value(&flag, args.next())?)
            }
            "--static" => {
                network.mode = NetworkMode::Static;
                network.addresses.push(value(&flag, args.next())?);
            }
            "--gateway" => network.gateway = Some(value::<IpAddr>(&flag, args.next())?),
            "--dns" => network.dns.push(value(&flag, args.next())?),
            "--renew-once" => renew_once = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.resolv_conf.as_os_str().is_empty() {
        return Err("--resolv PATH is required (the host's resolv.conf is never written)".into());
    }
    let log = |s: &str| eprintln!("probe: {s}");
    let mut state = net::configure_with(&network, &options, &log).map_err(|e| e.to_string())?;
    print_state(&state);
    if renew_once {
        let before = state.lease.as_ref().map(|l| l.obtained);
        // One call may end without a renewal (no answer before T2); a few cover rebinding.
        for _ in 0..3 {
            net::maintain_lease(&mut state, &log).map_err(|e| e.to_string())?;
            if state.lease.as_ref().map(|l| l.obtained) != before {
                println!("renewed=yes");
                print_state(&state);
                return Ok(());
            }
        }
        return Err("the lease was not renewed".into());
    }
    Ok(())
}

fn print_state(s: &NetState) {
    let join = |v: Vec<String>| v.join(",");
    println!("interface={}", s.interface);
    println!("mac={}", s.mac.map(|m| m.to_string()).unwrap_or_default());
    println!(
        "addresses={}",
        join(s.addresses.iter().map(ToString::to_string).collect())
    );
    println!(
        "gateway={}",
        s.gateway.map(|g| g.to_string()).unwrap_or_default()
    );
    println!(
        "dns={}",
        join(s.dns.iter().map(ToString::to_string).collect())
    );
    println!("search={}", s.search.clone().unwrap_or_default());
    println!(
        "hostname={}",
        s.dhcp_hostname
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_default()
    );
    if let Some(l) = &s.lease {
        println!("lease_server={}", l.server);
        println!(
            "lease_secs={}",
            l.duration
                .map(|d| d.as_secs().to_string())
                .unwrap_or_default()
        );
        println!("lease_t1={}", l.t1.as_secs());
    }
}
