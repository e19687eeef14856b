//! The caller's identity, extracted once at the edge and required by every service call.

use serde::{Deserialize, Serialize};

use crate::domain::{ReadScope, parse_identifier};
use crate::error::{ServiceError, ServiceResult};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub query: bool,
    pub admin: bool,
}

impl Permissions {
    pub fn all() -> Self {
        Self { read: true, write: true, query: true, admin: true }
    }

    /// Parses `read,write,query,admin` (any subset, comma separated).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut permissions = Permissions::default();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "read" => permissions.read = true,
                "write" => permissions.write = true,
                "query" => permissions.query = true,
                "admin" => permissions.admin = true,
                other => return Err(format!("unknown permission '{other}' (read, write, query, admin)")),
            }
        }
        Ok(permissions)
    }

    pub fn names(&self) -> Vec<&'static str> {
        [(self.read, "read"), (self.write, "write"), (self.query, "query"), (self.admin, "admin")]
            .into_iter()
            .filter_map(|(granted, name)| granted.then_some(name))
            .collect()
    }

    /// The permissions in both sets: a token never carries more than its key.
    pub fn intersect(self, other: Permissions) -> Self {
        Self {
            read: self.read && other.read,
            write: self.write && other.write,
            query: self.query && other.query,
            admin: self.admin && other.admin,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
    Query,
    Admin,
}

/// Who is calling. A `trusted` principal (stdio, or HTTP with authentication disabled) may act as any
/// agent id named in a request; any other principal acts only as itself unless it is an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub agent_id: String,
    pub agent_type: String,
    pub permissions: Permissions,
    /// Sessions this principal is limited to; `None` means every session.
    pub sessions: Option<Vec<String>>,
    pub trusted: bool,
}

impl Principal {
    /// A local agent that may read, write and query, and speak for any agent id (no authentication).
    /// It is not an admin: acting as agent X it sees what X sees.
    pub fn local_trusted(agent_id: &str) -> Self {
        let permissions = Permissions { read: true, write: true, query: true, admin: false };
        Self { agent_id: agent_id.to_string(), agent_type: "local".into(), permissions, sessions: None, trusted: true }
    }

    /// No permission at all: what a request that reached a handler without an identity gets when
    /// authentication is on (the authenticate layer attaches one to every request, so this only keeps a
    /// routing mistake from failing open).
    pub fn nobody() -> Self {
        let permissions = Permissions { read: false, write: false, query: false, admin: false };
        Self {
            agent_id: String::new(),
            agent_type: "none".into(),
            permissions,
            sessions: Some(Vec::new()),
            trusted: false,
        }
    }

    pub fn admin(agent_id: &str) -> Self {
        Self {
            agent_id: agent_id.to_string(),
            agent_type: "admin".into(),
            permissions: Permissions::all(),
            sessions: None,
            trusted: false,
        }
    }

    pub fn require(&self, permission: Permission) -> ServiceResult<()> {
        let granted = self.permissions.admin
            || match permission {
                Permission::Read => self.permissions.read,
                Permission::Write => self.permissions.write,
                Permission::Query => self.permissions.query,
                Permission::Admin => false,
            };
        if granted {
            Ok(())
        } else {
            let name = format!("{permission:?}").to_lowercase();
            Err(ServiceError::PermissionDenied(format!("this call needs the {name} permission")))
        }
    }

    /// The agent a call acts as: the requested one if this principal may speak for it, else its own.
    pub fn acting_agent(&self, requested: Option<&str>) -> ServiceResult<String> {
        match requested {
            None => Ok(self.agent_id.clone()),
            Some(agent) => {
                let agent = parse_identifier("agent_id", agent)?;
                if agent == self.agent_id || self.trusted || self.permissions.admin {
                    Ok(agent)
                } else {
                    Err(ServiceError::PermissionDenied("a caller may only act as its own agent_id".into()))
                }
            }
        }
    }

    /// What this principal may read when acting as `agent_id`.
    pub fn read_scope(&self, agent_id: &str) -> ReadScope {
        ReadScope {
            agent_id: agent_id.to_string(),
            admin: self.permissions.admin,
            sessions: if self.permissions.admin { None } else { self.sessions.clone() },
        }
    }

    /// Whether this principal may touch the session at all.
    pub fn may_use_session(&self, session_id: &str) -> bool {
        self.permissions.admin || self.sessions.as_ref().is_none_or(|s| s.iter().any(|id| id == session_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_and_intersect() {
        let key = Permissions::parse("read,write").unwrap();
        let asked = Permissions::parse("read,admin").unwrap();
        assert_eq!(key.intersect(asked), Permissions { read: true, ..Default::default() });
        assert!(Permissions::parse("root").is_err());
        assert_eq!(Permissions::all().names(), vec!["read", "write", "query", "admin"]);
    }

    #[test]
    fn a_non_trusted_principal_cannot_act_as_another_agent() {
        let mut alice = Principal::local_trusted("alice");
        alice.trusted = false;
        assert!(alice.acting_agent(Some("bob")).is_err());
        assert_eq!(alice.acting_agent(Some("alice")).unwrap(), "alice");
        assert_eq!(Principal::admin("root").acting_agent(Some("bob")).unwrap(), "bob");
    }
}
