//! Tenants, named by the `X-Scope-OrgID` header as in Tempo, Loki and Mimir.

use std::fmt;

/// The header (HTTP) and metadata key (gRPC) that names a request's tenant, in
/// the lowercase form both take.
pub const TENANT_HEADER: &str = "x-scope-orgid";

/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// The longest tenant id accepted.
pub const MAX_TENANT_LEN: usize = 64;

/// A validated tenant id.
///
/// Tenant ids become directory names in the store, so only ASCII letters, digits,
/// `-`, `_` and `.` (but not `.` or `..` alone) are allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_LEN} characters")]
    TooLong,
    #[error("tenant id may only contain ascii letters, digits, '-', '_' and '.'")]
    InvalidCharacter,
}

impl Tenant {
    pub fn new(id: &str) -> Result<Self, TenantError> {
        if id.is_empty() {
            return Err(TenantError::Empty);
        }
        if id.len() > MAX_TENANT_LEN {
            return Err(TenantError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !id.chars().all(allowed) || id == "." || id == ".." {
            return Err(TenantError::InvalidCharacter);
        }
        Ok(Self(id.to_owned()))
    }

    /// The tenant of requests that do not name one.
    pub fn default_tenant() -> Self {
        Self(DEFAULT_TENANT.to_owned())
    }

    /// Reads the `X-Scope-OrgID` header value; absent means the default tenant.
    pub fn from_header(value: Option<&str>) -> Result<Self, TenantError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::default_tenant()),
            Some(v) => Self::new(v),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_absent_or_blank_is_default() {
        assert_eq!(Tenant::from_header(None).unwrap().as_str(), "default");
        assert_eq!(Tenant::from_header(Some("  ")).unwrap().as_str(), "default");
    }

    #[test]
    fn path_like_ids_are_refused() {
        assert_eq!(Tenant::new("../etc"), Err(TenantError::InvalidCharacter));
        assert_eq!(Tenant::new(".."), Err(TenantError::InvalidCharacter));
        assert_eq!(Tenant::new("a/b"), Err(TenantError::InvalidCharacter));
        assert_eq!(Tenant::new(&"x".repeat(65)), Err(TenantError::TooLong));
        assert_eq!(Tenant::new("team-a_1.prod").unwrap().as_str(), "team-a_1.prod");
    }
}
