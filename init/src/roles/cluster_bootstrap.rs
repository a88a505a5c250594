//! What a control plane creates in its own cluster so that workers can join with the
//! bootstrap token, as kubeadm's `bootstrap-token` phase does: the token's Secret in
//! `kube-system`, and the RBAC bindings that let token holders ask for a client certificate
//! and get it approved (and let nodes renew theirs). Pure: typed objects rendered to JSON;
//! `crate::kube_client` sends them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keel_contract::secrets::BootstrapToken;

/// The group every bootstrap token of this cluster authenticates into (kubeadm's name, so
/// that tools and docs written for kubeadm clusters apply).
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";
pub const NODES_GROUP: &str = "system:nodes";
/// The Secret type the API server's bootstrap authenticator reads.
pub const TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";

/// One object to create: where to POST it, what it is, and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiObject {
    /// The collection path, e.g. `/api/v1/namespaces/kube-system/secrets`.
    pub collection: &'static str,
    /// `Secret/kube-system/bootstrap-token-abcdef`, for messages.
    pub describe: String,
    pub body: String,
}

/// The token Secret and the three ClusterRoleBindings, in the order they are created.
pub fn objects(token: &BootstrapToken) -> Result<Vec<ApiObject>, serde_json::Error> {
    objects_expiring(token, None)
}

/// As [`objects`], the token's Secret with `expiration` (RFC 3339) when it has one: the
/// API server's bootstrap authenticator refuses the token after it, and the token cleaner
/// deletes the Secret (kubeadm's `--token-ttl`). `None` for the token leaves it out: the
/// bindings only.
pub fn objects_expiring(
    token: &BootstrapToken,
    expiration: Option<&str>,
) -> Result<Vec<ApiObject>, serde_json::Error> {
    let mut out = vec![token_secret(token, expiration)?];
    out.extend(bindings()?);
    Ok(out)
}

/// What a control plane creates at `now` (unix seconds): the token's Secret, with its
/// expiration `ttl_hours` after the token was made (none for 0), and the bindings; or, once
/// that time has passed, the bindings only, and when the token expired. A token past its
/// time is never created again: the token cleaner deleted it, and a copy of the secrets
/// (a worker's STATE, an old drive) must not bring it back.
pub fn objects_at(
    token: &BootstrapToken,
    secrets_created: u64,
    ttl_hours: u32,
    now: u64,
) -> Result<(Vec<ApiObject>, Option<u64>), serde_json::Error> {
    match token.expires(secrets_created, ttl_hours) {
        Some(at) if at <= now => Ok((bindings()?, Some(at))),
        Some(at) => {
            let stamp = i64::try_from(at).ok().and_then(keel_pki::rfc3339);
            Ok((objects_expiring(token, stamp.as_deref())?, None))
        }
        None => Ok((objects_expiring(token, None)?, None)),
    }
}

fn token_secret(
    token: &BootstrapToken,
    expiration: Option<&str>,
) -> Result<ApiObject, serde_json::Error> {
    let name = format!("bootstrap-token-{}", token.id);
    let mut data: BTreeMap<String, String> = [
        ("token-id", token.id.as_str()),
        ("token-secret", token.secret.as_str()),
        ("usage-bootstrap-authentication", "true"),
        ("usage-bootstrap-signing", "true"),
        ("auth-extra-groups", BOOTSTRAPPERS_GROUP),
        (
            "description",
            "Keel: kubelets of this cluster's workers join with it (TLS bootstrapping)",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if let Some(at) = expiration {
        data.insert("expiration".into(), at.to_owned());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some("kube-system".into()),
            ..Default::default()
        },
        type_: Some(TOKEN_SECRET_TYPE.into()),
        string_data: Some(data),
        ..Default::default()
    };
    Ok(ApiObject {
        collection: "/api/v1/namespaces/kube-system/secrets",
        describe: format!("Secret/kube-system/{name}"),
        body: serde_json::to_string(&secret)?,
    })
}

fn bindings() -> Result<Vec<ApiObject>, serde_json::Error> {
    let mut out = Vec::new();
    for (name, cluster_role, group) in [
        // Token holders may create CertificateSigningRequests...
        (
            "kubeadm:kubelet-bootstrap",
            "system:node-bootstrapper",
            BOOTSTRAPPERS_GROUP,
        ),
        // ...which the controller manager approves for them...
        (
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            BOOTSTRAPPERS_GROUP,
        ),
        // ...and nodes may renew their own client certificates.
        (
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            NODES_GROUP,
        ),
    ] {
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: cluster_role.into(),
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Group".into(),
                name: group.into(),
                namespace: None,
            }]),
        };
        out.push(ApiObject {
            collection: "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            describe: format!("ClusterRoleBinding/{name}"),
            body: serde_json::to_string(&binding)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BootstrapToken {
        BootstrapToken {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into(),
            created: None,
        }
    }

    #[test]
    fn the_token_expires_after_its_ttl_and_is_not_created_again() {
        let made = 1_700_000_000;
        let (objects, expired) = objects_at(&token(), made, 24, made + 3600).unwrap();
        assert_eq!((objects.len(), expired), (4, None));
        let secret: Secret = serde_json::from_str(&objects[0].body).unwrap();
        assert_eq!(
            secret.string_data.unwrap()["expiration"],
            "2023-11-15T22:13:20Z",
            "24 hours after the token was made"
        );
        let (objects, expired) = objects_at(&token(), made, 24, made + 86_400).unwrap();
        assert_eq!(expired, Some(made + 86_400));
        assert_eq!(objects.len(), 3, "the bindings, not the token");
        assert!(objects.iter().all(|o| !o.describe.starts_with("Secret/")));
        // A renewed token counts from when it was made; 0 never expires.
        let renewed = BootstrapToken {
            created: Some(made + 10 * 86_400),
            ..token()
        };
        let (objects, expired) = objects_at(&renewed, made, 24, made + 10 * 86_400 + 60).unwrap();
        assert_eq!((objects.len(), expired), (4, None));
        let (objects, expired) = objects_at(&token(), made, 0, made + 1000 * 86_400).unwrap();
        assert_eq!((objects.len(), expired), (4, None));
        let secret: Secret = serde_json::from_str(&objects[0].body).unwrap();
        assert!(!secret.string_data.unwrap().contains_key("expiration"));
    }

    #[test]
    fn the_token_secret_is_what_the_bootstrap_authenticator_reads() {
        let objects = objects(&token()).unwrap();
        assert_eq!(objects.len(), 4);
        let json: serde_json::Value = serde_json::from_str(&objects[0].body).unwrap();
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Secret");
        let secret: Secret = serde_json::from_str(&objects[0].body).unwrap();
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("bootstrap-token-abcdef")
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("kube-system"));
        assert_eq!(secret.type_.as_deref(), Some(TOKEN_SECRET_TYPE));
        let data = secret.string_data.unwrap();
        assert_eq!(data["token-id"], "abcdef");
        assert_eq!(data["token-secret"], "0123456789abcdef");
        assert_eq!(data["usage-bootstrap-authentication"], "true");
        assert_eq!(data["auth-extra-groups"], BOOTSTRAPPERS_GROUP);
        assert!(
            !data.contains_key("expiration"),
            "the token does not expire"
        );
    }

    #[test]
    fn bindings_let_token_holders_ask_and_get_approved() {
        let objects = objects(&token()).unwrap();
        let bindings: Vec<ClusterRoleBinding> = objects[1..]
            .iter()
            .map(|o| serde_json::from_str(&o.body).unwrap())
            .collect();
        let summary: Vec<(String, String, String)> = bindings
            .iter()
            .map(|b| {
                let subject = &b.subjects.as_ref().unwrap()[0];
                assert_eq!(subject.kind, "Group");
                assert_eq!(b.role_ref.kind, "ClusterRole");
                (
                    b.metadata.name.clone().unwrap(),
                    b.role_ref.name.clone(),
                    subject.name.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "kubeadm:kubelet-bootstrap".to_owned(),
                    "system:node-bootstrapper".to_owned(),
                    BOOTSTRAPPERS_GROUP.to_owned()
                ),
                (
                    "kubeadm:node-autoapprove-bootstrap".to_owned(),
                    "system:certificates.k8s.io:certificatesigningrequests:nodeclient".to_owned(),
                    BOOTSTRAPPERS_GROUP.to_owned()
                ),
                (
                    "kubeadm:node-autoapprove-certificate-rotation".to_owned(),
                    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"
                        .to_owned(),
                    NODES_GROUP.to_owned()
                ),
            ]
        );
        for o in &objects[1..] {
            assert_eq!(
                o.collection,
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
            );
            let json: serde_json::Value = serde_json::from_str(&o.body).unwrap();
            assert_eq!(json["apiVersion"], "rbac.authorization.k8s.io/v1");
        }
    }
}
