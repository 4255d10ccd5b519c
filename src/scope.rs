//! Scope grammar and wildcard grants.
//!
//! A scope is `resource:action` (`ai:chat`), a resource wildcard
//! (`ai:*`) or the full wildcard `*`. Names are lowercase
//! `[a-z][a-z0-9_-]*`, at most 64 bytes. A *required* scope (from a route) is
//! always concrete; *granted* scopes (on a key or a role) may be wildcards.

use serde::{Deserialize, Serialize};

/// A syntactically valid scope (concrete or wildcard).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

/// Longest scope string accepted.
pub const MAX_SCOPE_LEN: usize = 64;

impl Scope {
    /// Parses a scope string.
    pub fn parse(s: &str) -> Option<Self> {
        Self::valid(s).then(|| Self(s.to_owned()))
    }

    fn valid(s: &str) -> bool {
        if s.len() > MAX_SCOPE_LEN {
            return false;
        }
        if s == "*" {
            return true;
        }
        match s.split_once(':') {
            Some((res, act)) => is_name(res) && (act == "*" || is_name(act)),
            None => false,
        }
    }

    /// The scope string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `*` and `resource:*`.
    pub fn is_wildcard(&self) -> bool {
        self.0 == "*" || self.0.ends_with(":*")
    }

    /// Whether this granted scope covers the concrete scope `required`.
    pub fn covers(&self, required: &str) -> bool {
        if self.0 == "*" || self.0 == required {
            return true;
        }
        match self.0.strip_suffix('*') {
            // "ai:*" covers "ai:chat" but not "ai:" or "aix:chat".
            Some(res_colon) => required.len() > res_colon.len() && required.starts_with(res_colon),
            None => false,
        }
    }

    /// Whether everything this scope grants is also granted by `others`.
    /// Used to refuse privilege escalation and to intersect with roles.
    pub fn within(&self, others: &[Scope]) -> bool {
        others.iter().any(|o| o.covers_scope(self))
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        // Reuses the decoded string: no second allocation per scope when a
        // record is read from KV.
        if Scope::valid(&s) {
            Ok(Self(s))
        } else {
            Err(format!("invalid scope {s:?}"))
        }
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Whether any of `granted` covers `required`.
pub fn grants(granted: &[Scope], required: &str) -> bool {
    granted.iter().any(|g| g.covers(required))
}

/// The scopes of `key` that `limit` (a role's scopes) also grants: a key
/// never does more than its user may. A wildcard on the key is narrowed to
/// the role's entries it covers (`*` ∩ [`ai:chat`] = [`ai:chat`]).
pub fn intersect(key: &[Scope], limit: &[Scope]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for k in key {
        if k.within(limit) {
            out.push(k.clone());
        } else {
            for l in limit {
                if k.covers_scope(l) {
                    out.push(l.clone());
                }
            }
        }
    }
    crate::sort_small(&mut out);
    out.dedup();
    out
}

impl Scope {
    /// Whether this scope grants everything `other` grants.
    fn covers_scope(&self, other: &Scope) -> bool {
        if self.0 == "*" {
            return true;
        }
        if other.0 == "*" {
            return false;
        }
        if other.0.ends_with(":*") {
            return self.0 == other.0;
        }
        self.covers(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Scope {
        Scope::parse(v).unwrap()
    }

    fn v(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|x| s(x)).collect()
    }

    #[test]
    fn grammar() {
        for ok in ["*", "ai:chat", "ai:*", "control:read", "a1:b_c-d"] {
            assert!(Scope::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "ai",
            "ai:",
            ":chat",
            "AI:chat",
            "ai:Chat",
            "ai:chat:x",
            "*:chat",
            "ai:ch*",
            "ai:**",
            " ai:chat",
            "ai :chat",
            "1ai:chat",
            "ai:ch at",
        ] {
            assert!(Scope::parse(bad).is_none(), "{bad}");
        }
        assert!(Scope::parse(&format!("a:{}", "b".repeat(63))).is_none());
    }

    #[test]
    fn wildcards() {
        assert!(grants(&v(&["*"]), "control:read"));
        assert!(grants(&v(&["ai:*"]), "ai:chat"));
        assert!(!grants(&v(&["ai:*"]), "aix:chat"));
        assert!(!grants(&v(&["ai:*"]), "control:read"));
        assert!(grants(&v(&["ai:chat"]), "ai:chat"));
        assert!(!grants(&v(&["ai:chat"]), "ai:chatter"));
        assert!(!grants(&v(&["ai:chatter"]), "ai:chat"));
        assert!(!grants(&[], "ai:chat"));
    }

    #[test]
    fn within() {
        assert!(s("ai:chat").within(&v(&["ai:*"])));
        assert!(s("ai:*").within(&v(&["*"])));
        assert!(s("ai:*").within(&v(&["ai:*"])));
        assert!(!s("ai:*").within(&v(&["ai:chat"])));
        assert!(!s("*").within(&v(&["ai:*", "control:*"])));
        assert!(!s("control:read").within(&v(&["ai:*"])));
    }

    #[test]
    fn intersection_narrows_wildcards() {
        assert_eq!(intersect(&v(&["*"]), &v(&["ai:chat", "control:read"])), v(&["ai:chat", "control:read"]));
        assert_eq!(intersect(&v(&["ai:*", "control:read"]), &v(&["ai:chat"])), v(&["ai:chat"]));
        assert_eq!(intersect(&v(&["ai:chat"]), &v(&["*"])), v(&["ai:chat"]));
        assert_eq!(intersect(&v(&["ai:*"]), &v(&["ai:*"])), v(&["ai:*"]));
        assert_eq!(intersect(&v(&["control:read"]), &v(&["ai:*"])), Vec::<Scope>::new());
    }
}
