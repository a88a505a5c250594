//! `[[node.network.links]]`: more interfaces with static addresses beside the main one (a
//! cluster network). They get no routes beyond their subnets (the kernel adds those with the
//! addresses): the main interface keeps the default route.

use keel_contract::profile::{IpCidr, StaticLink};

use super::{NetError, NetOptions, iface, netlink, sys};

/// One link as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub interface: String,
    pub addresses: Vec<IpCidr>,
}

/// Brings each link up and adds its addresses, in the profile's order. A link that is missing
/// is an error naming it and the interfaces present.
pub fn configure(
    links: &[StaticLink],
    options: &NetOptions,
    log: &dyn Fn(&str),
) -> Result<Vec<LinkState>, NetError> {
    let mut out = Vec::new();
    for link in links {
        let name = iface::select(&options.sysfs, Some(link.interface.as_str()))?;
        sys::set_up(&name)?;
        let ifindex = sys::ifindex(&name)?;
        for a in &link.addresses {
            netlink::address(netlink::Action::Add, &name, ifindex, a)?;
        }
        let list: Vec<String> = link.addresses.iter().map(ToString::to_string).collect();
        log(&format!("network: link {name} has {}", list.join(", ")));
        out.push(LinkState {
            interface: name,
            addresses: link.addresses.clone(),
        });
    }
    Ok(out)
}
