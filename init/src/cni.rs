//! CNI on the node: the plugin and configuration directories, writable and kept on /var, and
//! Keel's own pod network (`[node.pod_network]`).
//!
//! `/opt/cni/bin` is an overlay whose lower layer is the plugins the image ships
//! (`/usr/lib/cni`, Debian's containernetworking-plugins) and whose upper layer is on /var,
//! as Bottlerocket does it: containerd finds the shipped plugins and whatever a CNI DaemonSet
//! (flannel, Calico, Cilium) copies in, and what the DaemonSet wrote survives reboots and A/B
//! upgrades. `/etc/cni/net.d` is a bind mount of a directory on /var, as on Talos. `/opt`
//! itself is bind-mounted from /var for the other things DaemonSets put there.
//!
//! Keel's pod network is the `bridge` plugin with `host-local` IPAM from this node's pod range
//! and `portmap`, an nftables rule that masquerades pod traffic leaving the cluster's pod
//! range, and host-gw routes: each peer's pod range through that peer's address.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use keel_contract::profile::{IpCidr, PodNetwork, PodNetworkMode};
use serde_json::json;

use crate::net::{NetState, netlink};
use crate::{services, sys};

pub const BIN_DIR: &str = "/opt/cni/bin";
pub const CONF_DIR: &str = "/etc/cni/net.d";
/// Where Debian's containernetworking-plugins installs the plugins.
pub const SHIPPED_PLUGINS: &str = "/usr/lib/cni";
/// Keel's configuration in CONF_DIR; containerd takes the first file by name, so a
/// DaemonSet's `05-...` or `10-calico.conflist` (sorted before `99-`) wins over it.
pub const KEEL_CONFLIST: &str = "99-keel.conflist";
pub const NETWORK_NAME: &str = "keel";
pub const BRIDGE: &str = "keel0";

const OPT_STORE: &str = "/var/lib/keel/opt";
const BIN_UPPER: &str = "/var/lib/keel/cni/bin/upper";
const BIN_WORK: &str = "/var/lib/keel/cni/bin/work";
const CONF_STORE: &str = "/var/lib/keel/cni/net.d";
const NFT_RULES: &str = "/run/keel/pod-network.nft";
const NFT_TIMEOUT: Duration = Duration::from_secs(30);

/// Mounts `/opt`, `/opt/cni/bin` and `/etc/cni/net.d` (see the module documentation).
pub fn mount_dirs() -> sys::SysResult<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    for dir in [OPT_STORE, BIN_UPPER, BIN_WORK, CONF_STORE] {
        sys::mkdir_p(dir, 0o755)?;
    }
    sys::mount(OPT_STORE, "/opt", "", libc::MS_BIND | flags, None)?;
    sys::mkdir_p(BIN_DIR, 0o755)?;
    if Path::new(SHIPPED_PLUGINS).is_dir() {
        let options = format!("lowerdir={SHIPPED_PLUGINS},upperdir={BIN_UPPER},workdir={BIN_WORK}");
        sys::mount("overlay", BIN_DIR, "overlay", flags, Some(&options))?;
    } else {
        sys::mount(BIN_UPPER, BIN_DIR, "", libc::MS_BIND | flags, None)?;
    }
    sys::mkdir_p(CONF_DIR, 0o755)?;
    sys::mount(
        CONF_STORE,
        CONF_DIR,
        "",
        libc::MS_BIND | flags | libc::MS_NOEXEC,
        None,
    )
}

/// The CNI network configuration list for this node's pod range `own`.
pub fn conflist(own: &IpCidr) -> serde_json::Value {
    let own = own.canonical();
    let default_route = if own.addr.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    json!({
        "cniVersion": "0.4.0",
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                // Masquerading is Keel's nftables rule: traffic to other nodes' pods must keep
                // the pod's address, which the bridge plugin's own ipMasq would hide.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": own.to_string() }]],
                    "routes": [{ "dst": default_route }]
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    })
}

/// nftables rules: pod traffic from this node leaving the cluster's pod range is masqueraded
/// (pod-to-pod traffic keeps its addresses). Replaces the table on every boot.
pub fn masquerade_rules(own: &IpCidr, cluster: &IpCidr) -> String {
    let family = if own.addr.is_ipv4() { "ip" } else { "ip6" };
    let (own, cluster) = (own.canonical(), cluster.canonical());
    format!(
        "table {family} keel-pods {{}}\n\
         delete table {family} keel-pods\n\
         table {family} keel-pods {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\t{family} saddr {own} {family} daddr != {cluster} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// host-gw: each peer's pod range through the peer's node address.
pub fn route_plan(net: &PodNetwork) -> Vec<(IpCidr, IpAddr)> {
    net.peers
        .iter()
        .map(|p| (p.pod_cidr.canonical(), p.address))
        .collect()
}

/// Writes or removes Keel's CNI configuration, its masquerade rule and its routes. `None`
/// when the profile leaves pod networking to a DaemonSet; otherwise what was set up.
pub fn apply(
    net: &PodNetwork,
    cluster: &IpCidr,
    state: &NetState,
) -> Result<Option<String>, String> {
    let path = Path::new(CONF_DIR).join(KEEL_CONFLIST);
    let own = match (net.mode, net.pod_cidr) {
        (PodNetworkMode::Bridge, Some(own)) => own,
        // `keel profile check` refuses bridge without a range; a node told so anyway says so.
        (PodNetworkMode::Bridge, None) => return Err("mode bridge without pod_cidr".into()),
        (PodNetworkMode::None, _) => {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
            return Ok(None);
        }
    };
    let text = serde_json::to_string_pretty(&conflist(&own)).map_err(|e| e.to_string())?;
    write_atomically(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    sys::mkdir_p("/run/keel", 0o755).map_err(|e| e.to_string())?;
    std::fs::write(NFT_RULES, masquerade_rules(&own, cluster))
        .map_err(|e| format!("{NFT_RULES}: {e}"))?;
    services::run_command(
        &[
            "/usr/sbin/nft".to_owned(),
            "-f".to_owned(),
            NFT_RULES.to_owned(),
        ],
        NFT_TIMEOUT,
    )?;
    let mut routes = Vec::new();
    for (dst, via) in route_plan(net) {
        let mut route = netlink::Route::default_via(via, netlink::Proto::Static);
        route.dst = dst.addr;
        route.dst_len = dst.prefix;
        match netlink::route(
            netlink::Action::Add,
            &state.interface,
            state.ifindex,
            &route,
        ) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) => return Err(e.to_string()),
        }
        routes.push(format!("{dst} via {via}"));
    }
    Ok(Some(format!(
        "bridge {BRIDGE}, pods {} ({}), masquerade outside {}, host-gw routes: {}",
        own.canonical(),
        path.display(),
        cluster.canonical(),
        if routes.is_empty() {
            "none".to_owned()
        } else {
            routes.join(", ")
        }
    )))
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::profile::PodNetworkPeer;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    #[test]
    fn conflist_is_bridge_host_local_portmap_from_the_node_range() {
        let c = conflist(&cidr("10.244.1.7/24"));
        assert_eq!(c["name"], "keel");
        let plugins = c["plugins"].as_array().unwrap();
        let types: Vec<&str> = plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(plugins[0]["ipam"]["type"], "host-local");
        assert_eq!(
            plugins[0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
        assert_eq!(plugins[0]["isGateway"], true);
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);
        let v6 = conflist(&cidr("fd00:10:244:1::/64"));
        assert_eq!(v6["plugins"][0]["ipam"]["routes"][0]["dst"], "::/0");
    }

    #[test]
    fn masquerade_spares_the_cluster_pod_range() {
        let rules = masquerade_rules(&cidr("10.244.1.0/24"), &cidr("10.244.0.0/16"));
        assert!(
            rules.contains("ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade"),
            "{rules}"
        );
        assert!(rules.starts_with("table ip keel-pods {}\ndelete table ip keel-pods\n"));
        assert!(
            masquerade_rules(&cidr("fd00::/64"), &cidr("fd00::/48"))
                .contains("ip6 saddr fd00::/64 ip6 daddr != fd00::/48 masquerade")
        );
    }

    #[test]
    fn host_gw_routes_each_peer_range_through_its_node() {
        let net = PodNetwork {
            mode: PodNetworkMode::Bridge,
            pod_cidr: Some(cidr("10.244.1.0/24")),
            peers: vec![
                PodNetworkPeer {
                    address: "192.168.100.12".parse().unwrap(),
                    pod_cidr: cidr("10.244.2.5/24"),
                },
                PodNetworkPeer {
                    address: "192.168.100.13".parse().unwrap(),
                    pod_cidr: cidr("10.244.3.0/24"),
                },
            ],
        };
        let plan: Vec<String> = route_plan(&net)
            .iter()
            .map(|(dst, via)| format!("{dst} via {via}"))
            .collect();
        assert_eq!(
            plan,
            [
                "10.244.2.0/24 via 192.168.100.12",
                "10.244.3.0/24 via 192.168.100.13"
            ]
        );
        assert!(route_plan(&PodNetwork::default()).is_empty());
    }
}
