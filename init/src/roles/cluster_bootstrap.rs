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
    let name = format!("bootstrap-token-{}", token.id);
    let data: BTreeMap<String, String> = [
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
    let mut out = vec![ApiObject {
        collection: "/api/v1/namespaces/kube-system/secrets",
        describe: format!("Secret/kube-system/{name}"),
        body: serde_json::to_string(&secret)?,
    }];
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
        }
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
