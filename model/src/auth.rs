//! Who is calling: bearer tokens with a role and an optional pinned tenant,
//! checked the same way on the OTLP ports and the API port (`Verifier`).
//!
//! Auth is off until one token is configured. Tokens are kept only as their
//! SHA-256 digests; a presented token is hashed and compared with every known
//! digest in constant time, so neither its value nor which digest it is near
//! leaks through timing, and no token is ever held in a form that could be
//! logged.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::tenant::{TENANT_HEADER, Tenant};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Export spans and post changes.
    Ingest,
    /// Read everything: API GETs, SQL, UI pages, `/metrics`.
    Read,
    /// `Read`, plus deciding tickets, opening incidents and running analyses.
    Approve,
    /// All of them.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "ingest" => Ok(Self::Ingest),
            "read" => Ok(Self::Read),
            "approve" => Ok(Self::Approve),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown role {other:?}: expected ingest, read, approve or admin")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Approve => "approve",
            Self::Admin => "admin",
        }
    }

    /// Whether this role grants `p`.
    pub fn allows(self, p: Permission) -> bool {
        match self {
            Self::Admin => true,
            Self::Ingest => p == Permission::Ingest,
            Self::Read => p == Permission::Read,
            Self::Approve => matches!(p, Permission::Read | Permission::Decide),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Export spans (both OTLP ports) or post a change.
    Ingest,
    /// Read anything.
    Read,
    /// Decide a ticket, open an incident, run an analysis.
    Decide,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Read => "read",
            Self::Decide => "approve",
        }
    }
}

/// The caller a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who acts: the audit trail and the reviewer of a decision.
    pub name: String,
    pub role: Role,
    /// The one tenant the token may act on, when pinned.
    pub tenant: Option<Tenant>,
}

/// One configured token, by the SHA-256 of its value.
#[derive(Clone)]
pub struct TokenEntry {
    pub principal: Principal,
    digest: [u8; 32],
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry").field("principal", &self.principal).finish_non_exhaustive()
    }
}

impl TokenEntry {
    /// From the token's value (read from the variable the config names).
    pub fn from_secret(principal: Principal, secret: &str) -> Result<Self, String> {
        if secret.trim().len() < 16 {
            return Err(format!("the token of {:?} is shorter than 16 characters", principal.name));
        }
        Ok(Self { principal, digest: sha256(secret.as_bytes()) })
    }

    /// From the hex SHA-256 of the token.
    pub fn from_sha256(principal: Principal, hex: &str) -> Result<Self, String> {
        let hex = hex.trim();
        let bad = || format!("token_sha256 of {:?} must be 64 hex digits", principal.name);
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, b) in digest.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self { principal, digest })
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No usable `Authorization: Bearer` (401 / `UNAUTHENTICATED`).
    #[error("missing bearer token: send Authorization: Bearer <token>")]
    Missing,
    /// A token no entry matches (401 / `UNAUTHENTICATED`).
    #[error("unknown bearer token")]
    Unknown,
    /// A known token without the permission, or for another tenant (403 /
    /// `PERMISSION_DENIED`).
    #[error("{0}")]
    Forbidden(String),
    /// A malformed tenant header (400 / `INVALID_ARGUMENT`).
    #[error("invalid {TENANT_HEADER}: {0}")]
    BadTenant(String),
}

impl AuthError {
    /// 401 rather than 403: the caller is not known at all.
    pub fn unauthenticated(&self) -> bool {
        matches!(self, Self::Missing | Self::Unknown)
    }
}

/// Checks bearer tokens and tenants; shared by every port.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    tokens: Vec<TokenEntry>,
}

impl Verifier {
    pub fn new(tokens: Vec<TokenEntry>) -> Result<Self, String> {
        for (i, a) in tokens.iter().enumerate() {
            if tokens[..i].iter().any(|b| b.principal.name == a.principal.name) {
                return Err(format!("two tokens are named {:?}", a.principal.name));
            }
            if tokens[..i].iter().any(|b| b.digest == a.digest) {
                return Err(format!("the token of {:?} is also another token's", a.principal.name));
            }
        }
        Ok(Self { tokens })
    }

    /// Auth is on as soon as one token is configured.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The principal an `Authorization` header value stands for. `Ok(None)`
    /// when auth is off.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Option<Principal>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let token = authorization.and_then(bearer).ok_or(AuthError::Missing)?;
        let presented = sha256(token);
        // Every entry is compared, whichever matches, in constant time.
        let mut found: Option<&TokenEntry> = None;
        for e in &self.tokens {
            if constant_time_eq(&e.digest, &presented) {
                found = Some(e);
            }
        }
        found.map(|e| Some(e.principal.clone())).ok_or(AuthError::Unknown)
    }

    /// The tenant a request acts on, once its principal may do `need` there.
    /// `header` is the raw `X-Scope-OrgID` value. With auth off every request
    /// may do anything on the tenant it names.
    pub fn authorize(
        &self,
        principal: Option<&Principal>,
        need: Permission,
        header: Option<&str>,
    ) -> Result<Tenant, AuthError> {
        let named = match header.map(str::trim) {
            None | Some("") => None,
            Some(v) => Some(Tenant::new(v).map_err(|e| AuthError::BadTenant(e.to_string()))?),
        };
        let Some(p) = principal else {
            if self.enabled() {
                return Err(AuthError::Missing);
            }
            return Ok(named.unwrap_or_else(Tenant::default_tenant));
        };
        if !p.role.allows(need) {
            return Err(AuthError::Forbidden(format!(
                "the token {:?} has role {} and may not {}",
                p.name,
                p.role.as_str(),
                match need {
                    Permission::Ingest => "export spans or post changes",
                    Permission::Read => "read",
                    Permission::Decide => "decide tickets, open incidents or run analyses",
                }
            )));
        }
        match (&p.tenant, named) {
            (Some(pinned), None) => Ok(pinned.clone()),
            (Some(pinned), Some(t)) if *pinned == t => Ok(t),
            (Some(pinned), Some(t)) => {
                Err(AuthError::Forbidden(format!("the token {:?} acts on tenant {pinned} only, not {t}", p.name)))
            }
            (None, named) => Ok(named.unwrap_or_else(Tenant::default_tenant)),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive, as RFC 6750 has it).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    if v.len() < 7 || !v[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = v[7..].trim_ascii();
    (!t.is_empty()).then_some(t)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the optimizer from short-circuiting the loop above.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(name: &str, role: Role, tenant: Option<&str>, secret: &str) -> TokenEntry {
        let p = Principal { name: name.into(), role, tenant: tenant.map(|t| Tenant::new(t).unwrap()) };
        TokenEntry::from_secret(p, secret).unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(vec![
            entry("ci", Role::Ingest, Some("shop"), "ingest-token-0123456789"),
            entry("dash", Role::Read, None, "read-token-0123456789"),
            entry("dana", Role::Approve, Some("shop"), "approve-token-0123456789"),
            entry("root", Role::Admin, None, "admin-token-0123456789"),
        ])
        .unwrap()
    }

    #[test]
    fn with_no_token_configured_every_caller_may_do_anything_on_the_tenant_it_names() {
        let v = Verifier::default();
        assert_eq!(v.authenticate(None).unwrap(), None);
        assert_eq!(v.authorize(None, Permission::Decide, Some("acme")).unwrap().as_str(), "acme");
        assert_eq!(v.authorize(None, Permission::Ingest, None).unwrap().as_str(), "default");
    }

    #[test]
    fn a_missing_or_unknown_token_is_unauthenticated() {
        let v = verifier();
        assert_eq!(v.authenticate(None), Err(AuthError::Missing));
        assert_eq!(v.authenticate(Some(b"Basic abc")), Err(AuthError::Missing));
        assert_eq!(v.authenticate(Some(b"Bearer ")), Err(AuthError::Missing));
        assert_eq!(v.authenticate(Some(b"Bearer read-token-012345678")), Err(AuthError::Unknown));
        assert_eq!(v.authorize(None, Permission::Read, None), Err(AuthError::Missing));
        let p = v.authenticate(Some(b"bearer  read-token-0123456789 ")).unwrap().unwrap();
        assert_eq!(p.name, "dash");
    }

    #[test]
    fn roles_grant_what_the_contract_says() {
        use Permission::*;
        let cases = [
            (Role::Ingest, [true, false, false]),
            (Role::Read, [false, true, false]),
            (Role::Approve, [false, true, true]),
            (Role::Admin, [true, true, true]),
        ];
        for (role, want) in cases {
            let got = [Ingest, Read, Decide].map(|p| role.allows(p));
            assert_eq!(got, want, "{role:?}");
        }
    }

    #[test]
    fn a_pinned_token_reaches_its_tenant_only() {
        let v = verifier();
        let ci = v.authenticate(Some(b"Bearer ingest-token-0123456789")).unwrap().unwrap();
        assert_eq!(v.authorize(Some(&ci), Permission::Ingest, None).unwrap().as_str(), "shop");
        assert_eq!(v.authorize(Some(&ci), Permission::Ingest, Some("shop")).unwrap().as_str(), "shop");
        let other = v.authorize(Some(&ci), Permission::Ingest, Some("bank"));
        assert!(matches!(other, Err(AuthError::Forbidden(ref m)) if m.contains("shop only")), "{other:?}");
        assert!(matches!(v.authorize(Some(&ci), Permission::Read, None), Err(AuthError::Forbidden(_))));
        // An unpinned token takes the header.
        let dash = v.authenticate(Some(b"Bearer read-token-0123456789")).unwrap().unwrap();
        assert_eq!(v.authorize(Some(&dash), Permission::Read, Some("bank")).unwrap().as_str(), "bank");
        assert_eq!(v.authorize(Some(&dash), Permission::Read, None).unwrap().as_str(), "default");
        assert!(matches!(v.authorize(Some(&dash), Permission::Read, Some("../x")), Err(AuthError::BadTenant(_))));
    }

    #[test]
    fn tokens_are_configured_by_value_or_digest_and_never_twice() {
        let p = |n: &str| Principal { name: n.into(), role: Role::Read, tenant: None };
        // sha256("test-token-0123456789")
        let hex = format!("{:x}", Sha256::digest(b"test-token-0123456789"));
        let v = Verifier::new(vec![TokenEntry::from_sha256(p("a"), &hex).unwrap()]).unwrap();
        assert_eq!(v.authenticate(Some(b"Bearer test-token-0123456789")).unwrap().unwrap().name, "a");
        assert!(TokenEntry::from_sha256(p("a"), "abc").is_err());
        assert!(TokenEntry::from_secret(p("a"), "short").is_err());
        let twice = Verifier::new(vec![
            TokenEntry::from_secret(p("a"), "same-token-0123456789").unwrap(),
            TokenEntry::from_secret(p("b"), "same-token-0123456789").unwrap(),
        ]);
        assert!(twice.is_err());
        // Debug output never shows a digest.
        let shown = format!("{v:?}");
        assert!(!shown.contains(&hex[..16]), "{shown}");
    }
}
