//! What `keel cluster create` will make, decided before anything is written or started: the
//! nodes' names, roles, cluster addresses, MAC addresses, host ports and the node section each
//! one gets over fw_cfg. Pure: the caller picks the free ports and the L2 segment's port.

use std::net::Ipv4Addr;

use keel_contract::profile::{
    ClusterName, EtcdMember, Hostname, InterfaceName, IpCidr, Network, Node, Role, StaticLink,
};
use serde::{Deserialize, Serialize};

use super::ClusterError;

/// The cluster network every cluster uses (each has its own L2 segment, so they never meet).
pub const CLUSTER_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 5, 0, 0);
pub const CLUSTER_PREFIX: u8 = 24;
/// Control planes get .11, .12, ...; workers .101, .102, ...
const FIRST_CONTROL_PLANE_HOST: u8 = 11;
const FIRST_WORKER_HOST: u8 = 101;
/// The guest ports a node's user-network NIC forwards from the host.
pub const GUEST_API_PORT: u16 = keel_contract::api::PORT;
pub const GUEST_ETCD_PORT: u16 = 2379;
pub const GUEST_KUBE_API_PORT: u16 = 6443;
/// Kernel names of the two NICs: the user network first (DHCP, default route, forwards),
/// then the cluster's L2 (static address). QEMU adds them to the PCI bus in this order.
pub const USER_NIC: &str = "eth0";
pub const CLUSTER_NIC: &str = "eth1";
pub const MAX_CONTROL_PLANES: u8 = 9;
pub const MAX_WORKERS: u8 = 50;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: ClusterName,
    pub control_planes: u8,
    pub workers: u8,
    pub memory_mib: u32,
    pub cpus: u8,
}

/// One node of the cluster as planned and remembered in the cluster's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePlan {
    /// Host name, etcd member name and directory name: `NAME-cp-1`, `NAME-worker-1`.
    pub name: String,
    pub role: Role,
    /// On the cluster L2.
    pub address: Ipv4Addr,
    /// The user-network NIC's and the cluster NIC's MAC addresses.
    pub user_mac: String,
    pub cluster_mac: String,
    /// Host ports (on 127.0.0.1) forwarded to the node API, etcd and the Kubernetes API;
    /// workers have no etcd or Kubernetes API.
    pub api_port: u16,
    pub etcd_port: Option<u16>,
    pub kube_api_port: Option<u16>,
}

/// Checks the counts (an even number of control planes is allowed, with a warning).
pub fn check(request: &Request) -> Result<Vec<String>, ClusterError> {
    let bad = |field: &str, why: String| ClusterError::BadRequest(format!("{field}: {why}"));
    if request.control_planes == 0 || request.control_planes > MAX_CONTROL_PLANES {
        return Err(bad(
            "--controlplanes",
            format!("expected 1 to {MAX_CONTROL_PLANES}"),
        ));
    }
    if request.workers > MAX_WORKERS {
        return Err(bad("--workers", format!("expected 0 to {MAX_WORKERS}")));
    }
    if request.memory_mib < 512 {
        return Err(bad("--memory", "expected at least 512 (MiB)".into()));
    }
    if request.cpus == 0 {
        return Err(bad("--cpus", "expected at least 1".into()));
    }
    Ok(even_count_warning(request.control_planes)
        .into_iter()
        .collect())
}

/// The Kubernetes docs' advice for an even number of etcd members.
pub fn even_count_warning(control_planes: u8) -> Option<String> {
    control_planes.is_multiple_of(2).then(|| {
        format!(
            "{control_planes} control planes: etcd needs a majority, so an even count tolerates no more failures than one fewer (the Kubernetes docs advise an odd number)"
        )
    })
}

/// The nodes, control planes first. `ports` hands out free host ports.
pub fn nodes(
    request: &Request,
    ports: &mut dyn FnMut() -> Result<u16, ClusterError>,
) -> Result<Vec<NodePlan>, ClusterError> {
    let mut out = Vec::new();
    let roles = (1..=request.control_planes)
        .map(|i| (Role::ControlPlane, i, FIRST_CONTROL_PLANE_HOST + i - 1))
        .chain((1..=request.workers).map(|i| (Role::Worker, i, FIRST_WORKER_HOST + i - 1)));
    for (index, (role, number, host)) in roles.enumerate() {
        let kind = match role {
            Role::ControlPlane => "cp",
            Role::Worker => "worker",
        };
        let control_plane = role == Role::ControlPlane;
        let [a, b, c, _] = CLUSTER_NETWORK.octets();
        out.push(NodePlan {
            name: format!("{}-{kind}-{number}", request.name.as_str()),
            role,
            address: Ipv4Addr::new(a, b, c, host),
            user_mac: mac(0, index),
            cluster_mac: mac(1, index),
            api_port: ports()?,
            etcd_port: control_plane.then(&mut *ports).transpose()?,
            kube_api_port: control_plane.then(&mut *ports).transpose()?,
        });
    }
    Ok(out)
}

/// One more node of `role` for a running cluster (`keel cluster add`): the next number of its
/// kind (`NAME-cp-4`), its address, MACs no node has, and free host ports.
pub fn next_node(
    cluster: &ClusterName,
    existing: &[NodePlan],
    role: Role,
    ports: &mut dyn FnMut() -> Result<u16, ClusterError>,
) -> Result<NodePlan, ClusterError> {
    let (kind, first_host, last_host, most) = match role {
        Role::ControlPlane => (
            "cp",
            FIRST_CONTROL_PLANE_HOST,
            FIRST_WORKER_HOST - 1,
            MAX_CONTROL_PLANES,
        ),
        Role::Worker => ("worker", FIRST_WORKER_HOST, 254, MAX_WORKERS),
    };
    let prefix = format!("{}-{kind}-", cluster.as_str());
    let of_role: Vec<u8> = existing
        .iter()
        .filter(|n| n.role == role)
        .filter_map(|n| n.name.strip_prefix(&prefix)?.parse().ok())
        .collect();
    if of_role.len() >= usize::from(most) {
        return Err(ClusterError::BadRequest(format!(
            "cluster {} has {} {kind} nodes already (at most {most})",
            cluster.as_str(),
            of_role.len()
        )));
    }
    let number = of_role.iter().max().map_or(1, |n| n + 1);
    let host = first_host
        .checked_add(number - 1)
        .filter(|h| *h <= last_host)
        .ok_or_else(|| {
            ClusterError::BadRequest(format!(
                "no address left for {prefix}{number} (recreate the cluster)"
            ))
        })?;
    let used: std::collections::BTreeSet<&str> =
        existing.iter().map(|n| n.user_mac.as_str()).collect();
    let index = (0..256)
        .find(|i| !used.contains(mac(0, *i).as_str()))
        .ok_or_else(|| ClusterError::BadRequest("no MAC address left".into()))?;
    let [a, b, c, _] = CLUSTER_NETWORK.octets();
    let control_plane = role == Role::ControlPlane;
    Ok(NodePlan {
        name: format!("{prefix}{number}"),
        role,
        address: Ipv4Addr::new(a, b, c, host),
        user_mac: mac(0, index),
        cluster_mac: mac(1, index),
        api_port: ports()?,
        etcd_port: control_plane.then(&mut *ports).transpose()?,
        kube_api_port: control_plane.then(&mut *ports).transpose()?,
    })
}

/// Locally administered MACs in QEMU's range, one per NIC and node: `52:54:00:6b:NIC:INDEX`.
fn mac(nic: u8, index: usize) -> String {
    format!("52:54:00:6b:{nic:02x}:{:02x}", index % 256)
}

/// The control planes' shared address on the cluster L2 (`.10`), held by the etcd leader.
pub fn virtual_ip() -> Ipv4Addr {
    let [a, b, c, _] = CLUSTER_NETWORK.octets();
    Ipv4Addr::new(a, b, c, 10)
}

/// The Kubernetes API endpoint every node is given: the virtual IP.
pub fn endpoint() -> String {
    format!("https://{}:{GUEST_KUBE_API_PORT}", virtual_ip())
}

/// The node section `node` gets over fw_cfg: its role and name, DHCP on the user network,
/// its static address on the cluster L2, the cluster endpoint and the etcd members.
pub fn node_section(
    cluster: &ClusterName,
    nodes: &[NodePlan],
    node: &NodePlan,
) -> Result<Node, ClusterError> {
    let parse_err = |what: &str, why: String| ClusterError::Plan(format!("{what}: {why}"));
    let interface = |name: &str| -> Result<InterfaceName, ClusterError> {
        name.parse().map_err(|e| parse_err("interface", e))
    };
    let mut section = Node {
        role: node.role,
        hostname: Some(
            node.name
                .parse::<Hostname>()
                .map_err(|e| parse_err("host name", e))?,
        ),
        ..Node::default()
    };
    section.network = Network {
        interface: Some(interface(USER_NIC)?),
        links: vec![StaticLink {
            interface: interface(CLUSTER_NIC)?,
            addresses: vec![IpCidr {
                addr: node.address.into(),
                prefix: CLUSTER_PREFIX,
            }],
            vip: (node.role == Role::ControlPlane).then(virtual_ip),
        }],
        ..Network::default()
    };
    section.cluster.name = Some(cluster.clone());
    section.cluster.endpoint = Some(endpoint().parse().map_err(|e| parse_err("endpoint", e))?);
    for member in nodes.iter().filter(|n| n.role == Role::ControlPlane) {
        section.etcd.members.push(EtcdMember {
            name: member
                .name
                .parse()
                .map_err(|e| parse_err("member name", e))?,
            peer_url: format!("https://{}:2380", member.address)
                .parse()
                .map_err(|e| parse_err("peer URL", e))?,
        });
    }
    Ok(section)
}

/// `node` as the TOML document the node reads from fw_cfg (`[node]` and its tables).
pub fn node_toml(node: &Node) -> Result<String, ClusterError> {
    #[derive(Serialize)]
    struct Document<'a> {
        node: &'a Node,
    }
    toml::to_string(&Document { node }).map_err(|e| ClusterError::Plan(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(cps: u8, workers: u8) -> Request {
        Request {
            name: "dev".parse().unwrap(),
            control_planes: cps,
            workers,
            memory_mib: 1024,
            cpus: 1,
        }
    }

    fn planned(cps: u8, workers: u8) -> Vec<NodePlan> {
        let mut next = 40000;
        nodes(&request(cps, workers), &mut || {
            next += 1;
            Ok(next)
        })
        .unwrap()
    }

    #[test]
    fn three_control_planes_and_a_worker() {
        let nodes = planned(3, 1);
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["dev-cp-1", "dev-cp-2", "dev-cp-3", "dev-worker-1"]);
        assert_eq!(nodes[2].address, Ipv4Addr::new(10, 5, 0, 13));
        assert_eq!(nodes[3].address, Ipv4Addr::new(10, 5, 0, 101));
        assert!(nodes[3].etcd_port.is_none() && nodes[3].kube_api_port.is_none());
        let mut ports: Vec<u16> = nodes
            .iter()
            .flat_map(|n| [Some(n.api_port), n.etcd_port, n.kube_api_port])
            .flatten()
            .collect();
        assert_eq!(ports.len(), 10);
        ports.dedup();
        assert_eq!(ports.len(), 10, "every port is its own");
        let macs: std::collections::BTreeSet<&str> = nodes
            .iter()
            .flat_map(|n| [n.user_mac.as_str(), n.cluster_mac.as_str()])
            .collect();
        assert_eq!(macs.len(), 8);
    }

    #[test]
    fn every_node_gets_the_members_and_its_cluster_address() {
        let nodes = planned(3, 1);
        let section = node_section(&"dev".parse().unwrap(), &nodes, &nodes[3]).unwrap();
        let text = node_toml(&section).unwrap();
        // What the node parses at boot, and what `keel profile check` would say about it.
        let back: toml::Table = toml::from_str(&text).unwrap();
        let node: Node = back["node"].clone().try_into().unwrap();
        assert!(keel_contract::profile::validate_node(&node).is_empty());
        assert_eq!(node.role, Role::Worker);
        assert_eq!(node.network.links[0].interface.as_str(), CLUSTER_NIC);
        assert_eq!(
            node.network.links[0].addresses[0].to_string(),
            "10.5.0.101/24"
        );
        let members: Vec<String> = node
            .etcd
            .members
            .iter()
            .map(|m| format!("{}={}", m.name.as_str(), m.peer_url))
            .collect();
        assert_eq!(
            members,
            [
                "dev-cp-1=https://10.5.0.11:2380",
                "dev-cp-2=https://10.5.0.12:2380",
                "dev-cp-3=https://10.5.0.13:2380"
            ]
        );
        assert_eq!(
            node.cluster.endpoint.unwrap().to_string(),
            "https://10.5.0.10:6443"
        );
    }

    #[test]
    fn an_added_node_takes_the_next_number_and_unused_macs() {
        let cluster: ClusterName = "dev".parse().unwrap();
        let mut nodes = planned(3, 1);
        // cp-2 was removed: the next control plane is cp-4, not a second cp-3.
        nodes.remove(1);
        let mut next = 50000;
        let mut port = || {
            next += 1;
            Ok(next)
        };
        let cp = next_node(&cluster, &nodes, Role::ControlPlane, &mut port).unwrap();
        assert_eq!(cp.name, "dev-cp-4");
        assert_eq!(cp.address, Ipv4Addr::new(10, 5, 0, 14));
        assert!(cp.etcd_port.is_some());
        assert!(
            nodes
                .iter()
                .all(|n| n.user_mac != cp.user_mac && n.cluster_mac != cp.cluster_mac)
        );
        nodes.push(cp);
        let worker = next_node(&cluster, &nodes, Role::Worker, &mut port).unwrap();
        assert_eq!(worker.name, "dev-worker-2");
        assert_eq!(worker.address, Ipv4Addr::new(10, 5, 0, 102));
        assert!(nodes.iter().all(|n| n.user_mac != worker.user_mac));
        let full = planned(9, 0);
        assert!(next_node(&cluster, &full, Role::ControlPlane, &mut port).is_err());
    }

    #[test]
    fn counts_are_checked_and_even_control_planes_warned_about() {
        assert!(check(&request(0, 1)).is_err());
        assert!(check(&request(10, 1)).is_err());
        assert!(check(&request(3, 1)).unwrap().is_empty());
        let warnings = check(&request(2, 0)).unwrap();
        assert!(warnings[0].contains("odd number"), "{warnings:?}");
    }
}
