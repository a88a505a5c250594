//! `[node.pod_network]`: Keel's own pod network, for clusters that run no CNI DaemonSet.
//!
//! ```toml
//! [node.pod_network]
//! mode = "bridge"                 # "none" (default): /etc/cni/net.d is left to a DaemonSet
//! pod_cidr = "10.244.1.0/24"      # this node's pods (its Node's spec.podCIDR)
//! peers = [                       # the other nodes: host-gw routes to their pods
//!   { address = "192.168.100.12", pod_cidr = "10.244.2.0/24" },
//! ]
//! ```
//!
//! With `bridge`, the node writes a CNI configuration (the `bridge` plugin with `host-local`
//! IPAM from `pod_cidr`, then `portmap`) and routes each peer's `pod_cidr` through that
//! peer's address on the cluster network (flannel's host-gw backend does the same; it needs
//! the nodes on one L2 segment). The checks here run at `keel profile check` and at build
//! time, so a node never finds out at boot that its ranges overlap.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::validate::Problem;
use super::values::IpCidr;

/// `[node.pod_network]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetwork {
    #[serde(default)]
    pub mode: PodNetworkMode,
    /// This node's pod range: a subnet of `node.kubernetes.pod_cidr` (required for `bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<IpCidr>,
    /// The other nodes of the cluster and their pod ranges.
    #[serde(default)]
    pub peers: Vec<PodNetworkPeer>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PodNetworkMode {
    /// No pod network from Keel: a CNI DaemonSet (flannel, Calico, Cilium) installs one.
    #[default]
    None,
    /// A Linux bridge with host-local IPAM and portmap, host-gw routes to the peers.
    Bridge,
}

/// One other node: its address on the cluster network and its pods' range.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodNetworkPeer {
    pub address: IpAddr,
    pub pod_cidr: IpCidr,
}

impl IpCidr {
    /// The address with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Whether `ip` is inside this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4()
            && IpCidr {
                addr: ip,
                prefix: self.prefix,
            }
            .network()
                == self.network()
    }

    /// Whether `other` lies entirely inside this range.
    pub fn covers(&self, other: &IpCidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Whether the two ranges share any address.
    pub fn overlaps(&self, other: &IpCidr) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The range written canonically (host bits cleared), as routes and CNI want it.
    pub fn canonical(&self) -> IpCidr {
        IpCidr {
            addr: self.network(),
            prefix: self.prefix,
        }
    }
}

/// The rules of `[node.pod_network]` against the cluster's pod range.
pub fn check(net: &PodNetwork, cluster_pods: &IpCidr, out: &mut Vec<Problem>) {
    let problem = |field: String, message: String| Problem { field, message };
    let own = match (net.mode, net.pod_cidr) {
        (PodNetworkMode::None, _) => {
            if !net.peers.is_empty() {
                out.push(problem(
                    "node.pod_network.peers".into(),
                    "only allowed with mode = \"bridge\"".into(),
                ));
            }
            return;
        }
        (PodNetworkMode::Bridge, None) => {
            out.push(problem(
                "node.pod_network.pod_cidr".into(),
                format!(
                    "mode = \"bridge\" needs this node's pod range, a subnet of node.kubernetes.pod_cidr ({cluster_pods}), like \"10.244.1.0/24\""
                ),
            ));
            return;
        }
        (PodNetworkMode::Bridge, Some(own)) => own,
    };
    let within = |field: String, cidr: &IpCidr, out: &mut Vec<Problem>| {
        let max = if cidr.addr.is_ipv4() { 30 } else { 126 };
        if !cluster_pods.covers(cidr) {
            out.push(problem(
                field,
                format!("{cidr} is not inside node.kubernetes.pod_cidr ({cluster_pods})"),
            ));
        } else if cidr.prefix > max {
            out.push(problem(
                field,
                format!("{cidr} is too small: expected a prefix length of at most {max}"),
            ));
        }
    };
    within("node.pod_network.pod_cidr".into(), &own, out);
    let mut seen: Vec<(String, IpCidr)> = vec![("node.pod_network.pod_cidr".into(), own)];
    for (i, peer) in net.peers.iter().enumerate() {
        let field = format!("node.pod_network.peers[{i}]");
        within(format!("{field}.pod_cidr"), &peer.pod_cidr, out);
        if let Some((other, _)) = seen.iter().find(|(_, c)| c.overlaps(&peer.pod_cidr)) {
            out.push(problem(
                format!("{field}.pod_cidr"),
                format!("{} overlaps {other}", peer.pod_cidr),
            ));
        }
        seen.push((format!("{field}.pod_cidr"), peer.pod_cidr));
        if cluster_pods.contains(peer.address) {
            out.push(problem(
                format!("{field}.address"),
                format!(
                    "{} is a pod address: expected the node's address on the cluster network",
                    peer.address
                ),
            ));
        } else if peer.address.is_ipv4() != peer.pod_cidr.addr.is_ipv4() {
            out.push(problem(
                format!("{field}.address"),
                format!(
                    "{} cannot route {} (another address family)",
                    peer.address, peer.pod_cidr
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpCidr {
        s.parse().unwrap()
    }

    fn problems(toml_text: &str) -> Vec<Problem> {
        let net: PodNetwork = toml::from_str(toml_text).unwrap();
        let mut out = Vec::new();
        check(&net, &cidr("10.244.0.0/16"), &mut out);
        out
    }

    #[test]
    fn ranges() {
        let pods = cidr("10.244.0.0/16");
        assert!(pods.covers(&cidr("10.244.3.0/24")));
        assert!(!pods.covers(&cidr("10.245.3.0/24")));
        assert!(!cidr("10.244.3.0/24").covers(&pods));
        assert!(cidr("10.244.3.0/24").overlaps(&pods));
        assert!(!cidr("10.244.3.0/24").overlaps(&cidr("10.244.4.0/24")));
        assert_eq!(cidr("10.244.3.7/24").canonical(), cidr("10.244.3.0/24"));
        assert_eq!(cidr("fd00::1:2/64").canonical(), cidr("fd00::/64"));
        assert!(!pods.contains("fd00::1".parse().unwrap()));
        assert_eq!(cidr("0.0.0.0/0").network().to_string(), "0.0.0.0");
    }

    #[test]
    fn good_bridge_network() {
        let p = problems(
            r#"mode = "bridge"
pod_cidr = "10.244.1.0/24"
peers = [{ address = "192.168.100.12", pod_cidr = "10.244.2.0/24" }]"#,
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(problems("").is_empty());
    }

    #[test]
    fn broken_bridge_networks_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            ("mode = \"bridge\"", "node.pod_network.pod_cidr", "needs"),
            (
                "mode = \"bridge\"\npod_cidr = \"10.9.0.0/24\"",
                "node.pod_network.pod_cidr",
                "not inside",
            ),
            (
                "mode = \"bridge\"\npod_cidr = \"10.244.1.0/31\"",
                "node.pod_network.pod_cidr",
                "too small",
            ),
            (
                "mode = \"bridge\"\npod_cidr = \"10.244.1.0/24\"\npeers = [{ address = \"192.168.1.2\", pod_cidr = \"10.244.1.128/25\" }]",
                "node.pod_network.peers[0].pod_cidr",
                "overlaps node.pod_network.pod_cidr",
            ),
            (
                "mode = \"bridge\"\npod_cidr = \"10.244.1.0/24\"\npeers = [{ address = \"10.244.9.1\", pod_cidr = \"10.244.2.0/24\" }]",
                "node.pod_network.peers[0].address",
                "pod address",
            ),
            (
                "mode = \"bridge\"\npod_cidr = \"10.244.1.0/24\"\npeers = [{ address = \"fd00::2\", pod_cidr = \"10.244.2.0/24\" }]",
                "node.pod_network.peers[0].address",
                "address family",
            ),
            (
                "peers = [{ address = \"192.168.1.2\", pod_cidr = \"10.244.2.0/24\" }]",
                "node.pod_network.peers",
                "only allowed",
            ),
        ];
        for (text, field, words) in cases {
            let p = problems(text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(p[0].field, *field, "{text}");
            assert!(p[0].message.contains(words), "{text}: {}", p[0].message);
        }
        let two = problems(
            "mode = \"bridge\"\npod_cidr = \"10.244.1.0/24\"\npeers = [{ address = \"192.168.1.2\", pod_cidr = \"10.244.2.0/24\" }, { address = \"192.168.1.3\", pod_cidr = \"10.244.2.0/23\" }]",
        );
        assert_eq!(two.len(), 1, "{two:?}");
        assert_eq!(
            two[0].message,
            "10.244.2.0/23 overlaps node.pod_network.peers[0].pod_cidr"
        );
    }
}
