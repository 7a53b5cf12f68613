//! Identity rules of SPEC §2 that exist before the credential stores: organization ids and the
//! `local@org_id` user-name form.

/// A parsed user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Username<'a> {
    /// Local part (before the `@`).
    pub local: &'a str,
    /// Organization id (after the `@`).
    pub org: &'a str,
}

/// Why a user name is refused (answered as bad user name or password).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernameError {
    /// No `@`, or more than one.
    NotOneAt,
    /// Empty, too long, or holding a forbidden character.
    BadLocalPart,
    /// Not `[a-z0-9_-]{1,64}`.
    BadOrgId,
}

/// Whether `id` is a valid organization id: `[a-z0-9_-]{1,64}`.
pub fn valid_org_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses `local@org_id` with exactly one `@` (SPEC §2).
pub fn parse_username(u: &str) -> Result<Username<'_>, UsernameError> {
    let mut parts = u.split('@');
    let (Some(local), Some(org), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(UsernameError::NotOneAt);
    };
    if local.is_empty()
        || local.len() > 128
        || local.chars().any(|c| c.is_control() || matches!(c, '+' | '#' | '/'))
    {
        return Err(UsernameError::BadLocalPart);
    }
    if !valid_org_id(org) {
        return Err(UsernameError::BadOrgId);
    }
    Ok(Username { local, org })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(parse_username("alice@acme"), Ok(Username { local: "alice", org: "acme" }));
        assert_eq!(parse_username("alice"), Err(UsernameError::NotOneAt));
        assert_eq!(parse_username("a@b@c"), Err(UsernameError::NotOneAt));
        assert_eq!(parse_username("@acme"), Err(UsernameError::BadLocalPart));
        assert_eq!(parse_username("a/b@acme"), Err(UsernameError::BadLocalPart));
        assert_eq!(parse_username("alice@"), Err(UsernameError::BadOrgId));
        assert_eq!(parse_username("alice@ACME"), Err(UsernameError::BadOrgId));
        assert!(valid_org_id("org_k7xm4pqr2n5t"));
    }
}
