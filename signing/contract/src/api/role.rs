//! Operator roles: what a client certificate allows.

use serde::{Deserialize, Serialize};

use super::Request;

/// What an operator's client certificate allows on the API. The role is in the
/// certificate's subject, as an organisation (O) the keel CA put there: `keel secrets gen`
/// issues one certificate of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorRole {
    /// Status, version and logs.
    ReadOnly,
    /// Everything: also upgrade, rollback, reboot, shutdown (and `force`).
    Admin,
}

impl OperatorRole {
    /// The subject organisation of a read-only operator's certificate.
    pub const READ_ONLY_ORGANIZATION: &'static str = "keel:read-only";
    /// The subject organisation of an admin's certificate. Certificates from before roles
    /// (no organisation) are admins too: see [`OperatorRole::from_organizations`].
    pub const ADMIN_ORGANIZATION: &'static str = "keel:admin";

    /// The organisation the keel CA writes into this role's certificates.
    pub const fn organization(self) -> &'static str {
        match self {
            OperatorRole::ReadOnly => Self::READ_ONLY_ORGANIZATION,
            OperatorRole::Admin => Self::ADMIN_ORGANIZATION,
        }
    }

    /// The role of a client certificate from the keel CA, by its subject organisations:
    /// read-only if any says so (the lesser role wins), admin otherwise, which keeps the
    /// admin certificates issued before roles existed (no organisation) working.
    pub fn from_organizations<'a>(organizations: impl IntoIterator<Item = &'a str>) -> Self {
        let mut role = OperatorRole::Admin;
        for o in organizations {
            if o == Self::READ_ONLY_ORGANIZATION {
                role = OperatorRole::ReadOnly;
            }
        }
        role
    }

    /// Whether this role may make `request`.
    pub const fn allows(self, request: &Request) -> bool {
        match self {
            OperatorRole::Admin => true,
            OperatorRole::ReadOnly => !request.admin_only(),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            OperatorRole::ReadOnly => "read-only",
            OperatorRole::Admin => "admin",
        }
    }
}
