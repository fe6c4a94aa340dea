//! Who a peer is, from the SPIFFE id in its certificate's URI SAN:
//! `spiffe://<cluster>/agent/<agent-id>` or `spiffe://<cluster>/admin/<name>`.
//!
//! This is the one place a role is derived. The role is never taken from anything the
//! peer says on the wire, only from the certificate the cluster CA signed.

use std::fmt;

use crate::ids::AgentId;

const SCHEME: &str = "spiffe://";

/// A verified peer's role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Agent { cluster: String, id: AgentId },
    Admin { cluster: String, name: String },
}

/// Why a certificate's identity was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("the certificate has no SPIFFE id (expected one URI SAN spiffe://<cluster>/agent/<id> or .../admin/<name>)")]
    Missing,
    #[error("the certificate has {0} SPIFFE ids; exactly one is allowed")]
    Ambiguous(usize),
    #[error("malformed SPIFFE id {uri:?}: {reason}")]
    Malformed { uri: String, reason: String },
    #[error("the certificate belongs to cluster {found:?}, not {expected:?}")]
    WrongCluster { expected: String, found: String },
}

impl Identity {
    /// The URI SAN this identity is certified under.
    pub fn spiffe_uri(&self) -> String {
        match self {
            Identity::Agent { cluster, id } => format!("{SCHEME}{cluster}/agent/{id}"),
            Identity::Admin { cluster, name } => format!("{SCHEME}{cluster}/admin/{name}"),
        }
    }

    pub fn cluster(&self) -> &str {
        match self {
            Identity::Agent { cluster, .. } | Identity::Admin { cluster, .. } => cluster,
        }
    }

    /// Parse one SPIFFE URI.
    pub fn parse(uri: &str) -> Result<Identity, IdentityError> {
        let bad = |reason: &str| IdentityError::Malformed {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("not a spiffe:// URI"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [cluster, kind, name] = parts.as_slice() else {
            return Err(bad("expected spiffe://<cluster>/<agent|admin>/<name>"));
        };
        validate_cluster_name(cluster).map_err(|e| bad(&e))?;
        match *kind {
            "agent" => {
                let id = name
                    .parse::<AgentId>()
                    .map_err(|_| bad("the agent id is not a UUID"))?;
                Ok(Identity::Agent {
                    cluster: cluster.to_string(),
                    id,
                })
            }
            "admin" => {
                validate_admin_name(name).map_err(|e| bad(&e))?;
                Ok(Identity::Admin {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(bad("the role must be agent or admin")),
        }
    }

    /// The identity of a certificate with these URI SANs, for the given cluster.
    /// Non-SPIFFE URIs are ignored; exactly one SPIFFE id must remain.
    pub fn from_uri_sans(
        uris: &[String],
        expected_cluster: &str,
    ) -> Result<Identity, IdentityError> {
        let spiffe: Vec<&String> = uris.iter().filter(|u| u.starts_with(SCHEME)).collect();
        let uri = match spiffe.as_slice() {
            [] => return Err(IdentityError::Missing),
            [one] => *one,
            many => return Err(IdentityError::Ambiguous(many.len())),
        };
        let identity = Identity::parse(uri)?;
        if identity.cluster() != expected_cluster {
            return Err(IdentityError::WrongCluster {
                expected: expected_cluster.to_string(),
                found: identity.cluster().to_string(),
            });
        }
        Ok(identity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent { id, .. } => write!(f, "agent {id}"),
            Identity::Admin { name, .. } => write!(f, "admin {name}"),
        }
    }
}

/// A cluster name is a DNS-label-like trust domain: lower-case letters, digits, `-`
/// and `.`, 1 to 63 characters.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("a cluster name is 1 to 63 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(format!(
            "cluster name {name:?} may only hold a-z, 0-9, '-' and '.'"
        ));
    }
    Ok(())
}

/// An admin or agent display name: letters, digits, `-`, `_`, `.`; 1 to 63 characters.
pub fn validate_admin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("a name is 1 to 63 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "name {name:?} may only hold letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agents_and_admins() {
        let id = AgentId::new_v4();
        let agent = Identity::parse(&format!("spiffe://prod/agent/{id}")).expect("agent");
        assert_eq!(
            agent,
            Identity::Agent {
                cluster: "prod".into(),
                id
            }
        );
        assert_eq!(Identity::parse(&agent.spiffe_uri()), Ok(agent));
        let admin = Identity::parse("spiffe://prod/admin/ops").expect("admin");
        assert_eq!(
            admin,
            Identity::Admin {
                cluster: "prod".into(),
                name: "ops".into()
            }
        );
    }

    #[test]
    fn refuses_malformed_ids() {
        for uri in [
            "https://prod/agent/x",
            "spiffe://prod/agent/not-a-uuid",
            "spiffe://prod/root/x",
            "spiffe://prod/admin",
            "spiffe://prod/admin/a/b",
            "spiffe:///admin/x",
            "spiffe://PROD/admin/x",
            "spiffe://prod/admin/has space",
        ] {
            assert!(
                matches!(Identity::parse(uri), Err(IdentityError::Malformed { .. })),
                "{uri}"
            );
        }
    }

    #[test]
    fn needs_exactly_one_spiffe_id_of_the_right_cluster() {
        let ok = vec![
            "https://example.com".to_string(),
            "spiffe://prod/admin/ops".to_string(),
        ];
        assert!(Identity::from_uri_sans(&ok, "prod").is_ok());
        assert_eq!(
            Identity::from_uri_sans(&[], "prod"),
            Err(IdentityError::Missing)
        );
        let two = vec![
            "spiffe://prod/admin/a".to_string(),
            "spiffe://prod/admin/b".to_string(),
        ];
        assert_eq!(
            Identity::from_uri_sans(&two, "prod"),
            Err(IdentityError::Ambiguous(2))
        );
        let other = vec!["spiffe://staging/admin/a".to_string()];
        assert!(matches!(
            Identity::from_uri_sans(&other, "prod"),
            Err(IdentityError::WrongCluster { .. })
        ));
    }
}
