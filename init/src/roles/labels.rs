//! Node labels and taints from the profile, checked the way the kubelet and the API server
//! check them, and rendered as the kubelet's `--node-labels` and `--register-with-taints`.
//!
//! Checking here turns a kubelet that exits at every start ("unknown 'kubernetes.io' or
//! 'k8s.io' labels specified with --node-labels") or a node that never registers into one
//! plain message at boot.

use std::collections::BTreeMap;

use super::RoleError;

/// A taint's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

/// A parsed taint: `key=value:Effect` or `key:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: TaintEffect,
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}:{}", self.key, self.effect.as_str()),
            None => write!(f, "{}:{}", self.key, self.effect.as_str()),
        }
    }
}

/// Parses and checks one taint.
pub fn parse_taint(text: &str) -> Result<Taint, RoleError> {
    let bad = |why: &str| {
        RoleError::BadTaint(format!(
            "invalid taint {text:?}: {why}; expected \"key=value:Effect\" or \"key:Effect\" with Effect NoSchedule, PreferNoSchedule or NoExecute"
        ))
    };
    let (kv, effect) = text.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        _ => return Err(bad(&format!("unknown effect {effect:?}"))),
    };
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    check_key(key).map_err(|why| bad(&why))?;
    if let Some(v) = value {
        check_value(v).map_err(|why| bad(&why))?;
    }
    Ok(Taint {
        key: key.to_owned(),
        value: value.map(str::to_owned),
        effect,
    })
}

/// `--register-with-taints`: the taints, checked, comma-separated; `None` without taints.
pub fn taints_flag(taints: &[String]) -> Result<Option<String>, RoleError> {
    if taints.is_empty() {
        return Ok(None);
    }
    let parsed = taints
        .iter()
        .map(|t| parse_taint(t).map(|t| t.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(parsed.join(",")))
}

/// `--node-labels`: the labels, checked, as `k=v` sorted by key and comma-separated; `None`
/// without labels.
pub fn labels_flag(labels: &BTreeMap<String, String>) -> Result<Option<String>, RoleError> {
    if labels.is_empty() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    for (key, value) in labels {
        let bad = |why: String| RoleError::BadLabel(format!("invalid label {key:?}: {why}"));
        check_key(key).map_err(bad)?;
        check_value(value).map_err(bad)?;
        if !kubelet_may_set(key) {
            return Err(RoleError::BadLabel(format!(
                "the kubelet may not set {key:?}: labels in the kubernetes.io and k8s.io namespaces are limited to kubelet.kubernetes.io/*, node.kubernetes.io/* and a few well-known ones (node roles like node-role.kubernetes.io/* are set through the API, not by the kubelet)"
            )));
        }
        parts.push(format!("{key}={value}"));
    }
    Ok(Some(parts.join(",")))
}

/// The kubelet's own rule (`IsKubeletLabel` in k8s.io/kubelet): a label in the kubernetes.io
/// or k8s.io namespaces is refused unless it is one of these or in one of these namespaces,
/// so that a node cannot claim e.g. a control-plane role for itself.
fn kubelet_may_set(key: &str) -> bool {
    const LABELS: &[&str] = &[
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
    const NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];
    let Some((namespace, _)) = key.split_once('/') else {
        return true;
    };
    let within = |ns: &str, parent: &str| ns == parent || ns.ends_with(&format!(".{parent}"));
    let restricted = within(namespace, "kubernetes.io") || within(namespace, "k8s.io");
    !restricted || LABELS.contains(&key) || NAMESPACES.iter().any(|n| within(namespace, n))
}

/// A qualified name: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters, alphanumeric at both ends with `-`, `_` and `.` inside.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.len() > 253 || !prefix.split('.').all(label_ok) {
            return Err(format!(
                "the prefix {prefix:?} is not a lower-case DNS subdomain"
            ));
        }
    }
    if name.is_empty() {
        return Err("the key's name is empty".into());
    }
    check_name(name).map_err(|why| format!("the key's name {name:?} {why}"))
}

/// A label value: empty, or like a key's name.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|why| format!("the value {value:?} {why}"))
}

fn check_name(name: &str) -> Result<(), String> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > 63 {
        Err("is longer than 63 characters".into())
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        Err(
            "must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
                .into(),
        )
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_and_render() {
        let t = parse_taint("dedicated=gpu:NoSchedule").unwrap();
        assert_eq!(t.key, "dedicated");
        assert_eq!(t.value.as_deref(), Some("gpu"));
        assert_eq!(t.effect, TaintEffect::NoSchedule);
        let t = parse_taint("node-role.kubernetes.io/control-plane:NoSchedule").unwrap();
        assert_eq!(t.value, None);
        assert_eq!(
            taints_flag(&[
                "node-role.kubernetes.io/control-plane:NoSchedule".into(),
                "a=b:NoExecute".into(),
                "c=:PreferNoSchedule".into(),
            ])
            .unwrap()
            .unwrap(),
            "node-role.kubernetes.io/control-plane:NoSchedule,a=b:NoExecute,c=:PreferNoSchedule"
        );
        assert_eq!(taints_flag(&[]).unwrap(), None);
    }

    #[test]
    fn bad_taints_are_refused() {
        for bad in [
            "dedicated=gpu",
            "dedicated=gpu:Sometimes",
            ":NoSchedule",
            "a b:NoSchedule",
            "a=b,c:NoSchedule",
            "Upper.Case/x:NoSchedule",
        ] {
            let err = parse_taint(bad).unwrap_err();
            assert!(matches!(err, RoleError::BadTaint(_)), "{bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn labels_render_sorted() {
        let labels = BTreeMap::from([
            ("zone".to_owned(), "b".to_owned()),
            ("example.com/tier".to_owned(), "edge".to_owned()),
            ("node.kubernetes.io/pool".to_owned(), "gpu".to_owned()),
            ("topology.kubernetes.io/zone".to_owned(), "z1".to_owned()),
            ("empty".to_owned(), String::new()),
        ]);
        assert_eq!(
            labels_flag(&labels).unwrap().unwrap(),
            "empty=,example.com/tier=edge,node.kubernetes.io/pool=gpu,topology.kubernetes.io/zone=z1,zone=b"
        );
        assert_eq!(labels_flag(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn labels_the_kubelet_refuses_are_refused() {
        for key in [
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/role",
            "example.k8s.io/x",
        ] {
            let labels = BTreeMap::from([(key.to_owned(), String::new())]);
            let err = labels_flag(&labels).unwrap_err().to_string();
            assert!(err.contains("may not set"), "{key}: {err}");
        }
        for (key, value) in [("a", "has space"), ("a", "x,y=z"), ("-a", "x"), ("a/", "x")] {
            let labels = BTreeMap::from([(key.to_owned(), value.to_owned())]);
            assert!(labels_flag(&labels).is_err(), "{key}={value}");
        }
        let long = BTreeMap::from([("a".to_owned(), "x".repeat(64))]);
        assert!(labels_flag(&long).unwrap_err().to_string().contains("63"));
    }
}
