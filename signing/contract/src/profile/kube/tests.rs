use super::*;

#[test]
fn taints_parse_and_render() {
    let t: Taint = "dedicated=gpu:NoSchedule".parse().unwrap();
    assert_eq!(t.key.as_str(), "dedicated");
    assert_eq!(t.value.as_ref().map(LabelValue::as_str), Some("gpu"));
    assert_eq!(t.effect, TaintEffect::NoSchedule);
    let t: Taint = "node-role.kubernetes.io/control-plane:NoSchedule"
        .parse()
        .unwrap();
    assert_eq!(t.value, None);
    for text in [
        "node-role.kubernetes.io/control-plane:NoSchedule",
        "a=b:NoExecute",
        "c=:PreferNoSchedule",
    ] {
        assert_eq!(text.parse::<Taint>().unwrap().to_string(), text);
    }
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
        "gpu",
        "this is not a taint",
    ] {
        let err = bad.parse::<Taint>().unwrap_err();
        assert!(err.contains(bad), "{err}");
        assert!(err.contains("invalid taint"), "{err}");
    }
}

#[test]
fn label_keys_and_values() {
    for good in [
        "zone",
        "example.com/tier",
        "node.kubernetes.io/pool",
        "a_b.c-d",
    ] {
        assert!(good.parse::<LabelKey>().is_ok(), "{good}");
    }
    for bad in [
        "-a",
        "a/",
        "bad key!!",
        "Upper.Case/x",
        "/x",
        &"x".repeat(64),
    ] {
        assert!(bad.parse::<LabelKey>().is_err(), "{bad}");
    }
    assert!("".parse::<LabelValue>().is_ok());
    for bad in ["has space", "x,y=z", "-a"] {
        assert!(bad.parse::<LabelValue>().is_err(), "{bad}");
    }
    assert!(
        "x".repeat(64)
            .parse::<LabelValue>()
            .unwrap_err()
            .contains("63")
    );
}

#[test]
fn labels_the_kubelet_refuses_are_refused() {
    for key in [
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/worker",
        "kubernetes.io/role",
        "example.k8s.io/x",
    ] {
        let err = key.parse::<NodeLabelKey>().unwrap_err();
        assert!(err.contains("may not set"), "{key}: {err}");
    }
    for key in [
        "zone",
        "example.com/tier",
        "node.kubernetes.io/pool",
        "topology.kubernetes.io/zone",
        "x.kubelet.kubernetes.io/y",
    ] {
        assert!(key.parse::<NodeLabelKey>().is_ok(), "{key}");
    }
    assert!("bad key!!".parse::<NodeLabelKey>().is_err());
}

#[test]
fn kubernetes_versions() {
    let v: KubeVersion = "1.31.4".parse().unwrap();
    assert_eq!(
        (v.to_string(), v.tag()),
        ("1.31.4".into(), "v1.31.4".into())
    );
    assert_eq!("v1.32.0".parse::<KubeVersion>().unwrap().tag(), "v1.32.0");
    assert!("1.32.0-rc.1".parse::<KubeVersion>().is_ok());
    for bad in ["one.two", "1.31", "", "1.31.4+build"] {
        assert!(bad.parse::<KubeVersion>().is_err(), "{bad}");
    }
}

#[test]
fn peer_urls_are_https() {
    let u: PeerUrl = "https://10.0.0.1:2380".parse().unwrap();
    assert_eq!(u.to_string(), "https://10.0.0.1:2380");
    assert_eq!(
        "https://[fd00::1]:2380/"
            .parse::<PeerUrl>()
            .unwrap()
            .to_string(),
        "https://[fd00::1]:2380"
    );
    assert_eq!("https://cp-1".parse::<PeerUrl>().unwrap().port, 2380);
    for bad in [
        "not a url",
        "http://10.0.0.11:2380",
        "https://a,b:2380",
        "https://a=b:2380",
        "https://a:2380/x",
        "https://",
    ] {
        let err = bad.parse::<PeerUrl>().unwrap_err();
        assert!(err.contains("peer URL"), "{bad}: {err}");
    }
}

#[test]
fn subject_alt_names() {
    assert_eq!(
        "CP.Example.com"
            .parse::<SubjectAltName>()
            .unwrap()
            .to_string(),
        "cp.example.com"
    );
    assert!(matches!(
        "10.0.0.1".parse::<SubjectAltName>().unwrap(),
        SubjectAltName::Ip(_)
    ));
    assert!("*.example.com".parse::<SubjectAltName>().is_ok());
    for bad in ["a b", "under_score.example", "*", "a.*.b"] {
        assert!(bad.parse::<SubjectAltName>().is_err(), "{bad}");
    }
}

#[test]
fn image_repositories() {
    for (text, kept) in [
        ("registry.k8s.io", "registry.k8s.io"),
        ("registry.k8s.io/", "registry.k8s.io"),
        ("registry.example:5000/k8s", "registry.example:5000/k8s"),
        ("10.0.2.2:5000/a/b_c", "10.0.2.2:5000/a/b_c"),
    ] {
        assert_eq!(text.parse::<ImageRepository>().unwrap().as_str(), kept);
    }
    for bad in [
        "",
        "Registry.io",
        "r.io/Upper",
        "r.io//x",
        "r.io:x/k8s",
        "r.io/a b",
    ] {
        assert!(bad.parse::<ImageRepository>().is_err(), "{bad}");
    }
}
