//! Names the kubelet checks before it starts: its node name, `--node-labels` (with the
//! kubelet's own restriction on kubernetes.io labels) and `--register-with-taints`.

pub fn check_node_name(name: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "--hostname-override {name:?} is not a lower-case DNS subdomain"
        ))
    }
}

/// Labels `k=v,...`; keys in the kubernetes.io and k8s.io namespaces only where the kubelet
/// allows them (its `IsKubeletLabel`). Written again here on purpose, not taken from
/// `keel_contract::profile::kube`: the fake judges what the init renders, so it must not
/// share the parser whose output it checks.
pub fn check_labels(labels: &str) -> Result<(), String> {
    const ALLOWED: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
    ];
    let within = |ns: &str, parent: &str| ns == parent || ns.ends_with(&format!(".{parent}"));
    for pair in labels.split(',') {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--node-labels: {pair:?} is not key=value"))?;
        qualified_name(key).map_err(|e| format!("--node-labels: key {key:?}: {e}"))?;
        if !value.is_empty() {
            name_part(value).map_err(|e| format!("--node-labels: value {value:?}: {e}"))?;
        }
        if let Some((ns, _)) = key.split_once('/') {
            let restricted = within(ns, "kubernetes.io") || within(ns, "k8s.io");
            let allowed = ALLOWED.contains(&key)
                || within(ns, "kubelet.kubernetes.io")
                || within(ns, "node.kubernetes.io");
            if restricted && !allowed {
                return Err(format!(
                    "--node-labels: unknown 'kubernetes.io' or 'k8s.io' label {key:?} (the real kubelet refuses to start)"
                ));
            }
        }
    }
    Ok(())
}

pub fn check_taints(taints: &str) -> Result<(), String> {
    for taint in taints.split(',') {
        let bad = |why: &str| format!("--register-with-taints: {taint:?}: {why}");
        let (kv, effect) = taint.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(bad(
                "the effect is not NoSchedule, PreferNoSchedule or NoExecute",
            ));
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        qualified_name(key).map_err(|e| bad(&e))?;
        if !value.is_empty() {
            name_part(value).map_err(|e| bad(&e))?;
        }
    }
    Ok(())
}

fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = key.split_once('/').unwrap_or(("", key));
    if key.contains('/') {
        check_node_name(prefix).map_err(|_| format!("prefix {prefix:?} is not a DNS subdomain"))?;
    }
    name_part(name)
}

fn name_part(name: &str) -> Result<(), String> {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge(name.chars().next())
        && edge(name.chars().last());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not 1-63 letters, digits, '-', '_', '.' starting and ending alphanumeric"
        ))
    }
}
