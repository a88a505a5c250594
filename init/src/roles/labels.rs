//! Node labels and taints from the profile, rendered as the kubelet's `--node-labels` and
//! `--register-with-taints`.
//!
//! The values were checked when the profile was parsed (`keel_contract::profile::kube`: the
//! kubelet's and the API server's own rules, including which labels a kubelet may set for
//! itself), so a profile the kubelet would refuse fails `keel profile check` rather than the
//! node at boot. Rendering cannot fail.

use std::collections::BTreeMap;

use keel_contract::profile::{LabelValue, NodeLabelKey, Taint};

/// `--register-with-taints`: the taints, comma-separated; `None` without taints.
pub fn taints_flag(taints: &[Taint]) -> Option<String> {
    if taints.is_empty() {
        return None;
    }
    let rendered: Vec<String> = taints.iter().map(ToString::to_string).collect();
    Some(rendered.join(","))
}

/// `--node-labels`: the labels as `k=v` sorted by key and comma-separated; `None` without
/// labels.
pub fn labels_flag(labels: &BTreeMap<NodeLabelKey, LabelValue>) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(s: &str) -> Taint {
        s.parse().unwrap()
    }

    #[test]
    fn taints_render() {
        assert_eq!(
            taints_flag(&[
                taint("node-role.kubernetes.io/control-plane:NoSchedule"),
                taint("a=b:NoExecute"),
                taint("c=:PreferNoSchedule"),
            ])
            .unwrap(),
            "node-role.kubernetes.io/control-plane:NoSchedule,a=b:NoExecute,c=:PreferNoSchedule"
        );
        assert_eq!(taints_flag(&[]), None);
    }

    #[test]
    fn labels_render_sorted() {
        let labels: BTreeMap<NodeLabelKey, LabelValue> = [
            ("zone", "b"),
            ("example.com/tier", "edge"),
            ("node.kubernetes.io/pool", "gpu"),
            ("topology.kubernetes.io/zone", "z1"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect();
        assert_eq!(
            labels_flag(&labels).unwrap(),
            "empty=,example.com/tier=edge,node.kubernetes.io/pool=gpu,topology.kubernetes.io/zone=z1,zone=b"
        );
        assert_eq!(labels_flag(&BTreeMap::new()), None);
    }
}
