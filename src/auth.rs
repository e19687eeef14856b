//! The caller's identity, extracted once at the edge and required by every service call.

use serde::Serialize;

use crate::domain::{ReadScope, parse_identifier};
use crate::error::{ServiceError, ServiceResult};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub read: bool,
    pub write: bool,
    pub query: bool,
    pub admin: bool,
}

impl Permissions {
    pub fn all() -> Self {
        Self {
            read: true,
            write: true,
            query: true,
            admin: true,
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

/// Who is calling. A `trusted` principal (stdio, or HTTP before authentication is configured) may act
/// as any agent id named in a request; any other principal acts only as itself unless it is an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub agent_id: String,
    pub permissions: Permissions,
    pub trusted: bool,
}

impl Principal {
    /// A local agent that may read, write and query, and speak for any agent id (no authentication).
    /// It is not an admin: acting as agent X it sees what X sees.
    pub fn local_trusted(agent_id: &str) -> Self {
        let permissions = Permissions {
            read: true,
            write: true,
            query: true,
            admin: false,
        };
        Self {
            agent_id: agent_id.to_string(),
            permissions,
            trusted: true,
        }
    }

    pub fn admin(agent_id: &str) -> Self {
        Self {
            agent_id: agent_id.to_string(),
            permissions: Permissions::all(),
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
            Err(ServiceError::PermissionDenied(
                format!("this call needs the {permission:?} permission").to_lowercase(),
            ))
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
                    Err(ServiceError::PermissionDenied(
                        "a caller may only act as its own agent_id".into(),
                    ))
                }
            }
        }
    }

    /// What this principal may read when acting as `agent_id`.
    pub fn read_scope(&self, agent_id: &str) -> ReadScope {
        ReadScope {
            agent_id: agent_id.to_string(),
            admin: self.permissions.admin,
        }
    }
}
