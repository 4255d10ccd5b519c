//! The key guard: what a key's Durable Object decides on each request —
//! revocation first, then the rate limits. Pure; the object supplies its
//! stored [`GuardState`] and its clock and stores what [`check`] returns.
//!
//! One object per key id owns this state, single-threaded, so the counts are
//! exact however many requests arrive at once and wherever they come from,
//! and a revocation recorded here is refused on the very next check even
//! while KV still serves the old key record (KV propagation takes up to a
//! minute).

use serde::{Deserialize, Serialize};

use crate::ratelimit::{self, RateLimit, Verdict};

/// Everything a key's object stores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardState {
    /// The tombstone: when the key was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// Rate-limit counters.
    #[serde(default)]
    pub limiter: ratelimit::State,
}

/// A request from the worker (or the org object) to a key's object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GuardRequest {
    /// Admit one request under these limits (they travel with the check).
    Check {
        /// The key's effective limits.
        limits: Vec<RateLimit>,
    },
    /// Record the tombstone (idempotent: the first time wins).
    Revoke {
        /// Revocation time (ms).
        revoked_at: i64,
    },
}

/// The object's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum GuardReply {
    /// Admitted and counted.
    Allowed {
        /// The tightest limit after this request.
        quota: Option<QuotaWire>,
    },
    /// Refused by a rate limit; nothing counted.
    Limited {
        /// Milliseconds until the request would be admitted.
        retry_after_ms: i64,
        /// The tightest refusing limit.
        quota: QuotaWire,
    },
    /// The key is revoked.
    Revoked,
    /// The tombstone is recorded.
    RevokeRecorded {
        /// The recorded time (the first revocation's).
        revoked_at: i64,
    },
}

/// [`ratelimit::Quota`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaWire {
    /// Limit name.
    pub name: String,
    /// `RateLimit-Limit`.
    pub limit: u32,
    /// `RateLimit-Remaining`.
    pub remaining: u32,
    /// Milliseconds until `RateLimit-Reset`.
    pub reset_ms: i64,
}

impl From<ratelimit::Quota> for QuotaWire {
    fn from(q: ratelimit::Quota) -> Self {
        Self { name: q.name, limit: q.limit, remaining: q.remaining, reset_ms: q.reset_ms }
    }
}

impl QuotaWire {
    /// The `RateLimit-*` headers.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("RateLimit-Limit", self.limit.to_string()),
            ("RateLimit-Remaining", self.remaining.to_string()),
            ("RateLimit-Reset", ratelimit::ceil_seconds(self.reset_ms).to_string()),
        ]
    }
}

/// Applies a request to the state. Returns the reply and, when the state
/// changed, the state to store.
pub fn apply(state: &GuardState, request: &GuardRequest, now_ms: i64) -> (GuardReply, Option<GuardState>) {
    match request {
        GuardRequest::Revoke { revoked_at } => match state.revoked_at {
            Some(t) => (GuardReply::RevokeRecorded { revoked_at: t }, None),
            None => {
                let next = GuardState { revoked_at: Some(*revoked_at), limiter: state.limiter.clone() };
                (GuardReply::RevokeRecorded { revoked_at: *revoked_at }, Some(next))
            }
        },
        GuardRequest::Check { .. } if state.revoked_at.is_some() => (GuardReply::Revoked, None),
        GuardRequest::Check { limits } => {
            let (verdict, limiter) = ratelimit::step(&state.limiter, limits, now_ms);
            let next = GuardState { revoked_at: None, limiter };
            let reply = match verdict {
                Verdict::Allowed(q) => GuardReply::Allowed { quota: q.map(Into::into) },
                Verdict::Limited { retry_after_ms, quota } => {
                    GuardReply::Limited { retry_after_ms, quota: quota.into() }
                }
            };
            (reply, Some(next))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn limits(n: u32) -> Vec<RateLimit> {
        vec![RateLimit { name: "minute".into(), limit: n, window_seconds: 60 }]
    }

    #[test]
    fn revocation_wins_over_everything_and_is_idempotent() {
        let s = GuardState::default();
        let (r, s2) = apply(&s, &GuardRequest::Check { limits: limits(5) }, T0);
        assert!(matches!(r, GuardReply::Allowed { quota: Some(QuotaWire { remaining: 4, .. }) }));
        let s2 = s2.unwrap();
        let (r, s3) = apply(&s2, &GuardRequest::Revoke { revoked_at: T0 + 1 }, T0 + 1);
        assert_eq!(r, GuardReply::RevokeRecorded { revoked_at: T0 + 1 });
        let s3 = s3.unwrap();
        let (r, none) = apply(&s3, &GuardRequest::Check { limits: limits(5) }, T0 + 2);
        assert_eq!((r, none), (GuardReply::Revoked, None));
        let (r, none) = apply(&s3, &GuardRequest::Revoke { revoked_at: T0 + 9 }, T0 + 9);
        assert_eq!((r, none), (GuardReply::RevokeRecorded { revoked_at: T0 + 1 }, None));
    }

    #[test]
    fn limited_reply_and_headers() {
        let mut s = GuardState::default();
        for _ in 0..2 {
            s = apply(&s, &GuardRequest::Check { limits: limits(2) }, T0).1.unwrap();
        }
        let (r, _) = apply(&s, &GuardRequest::Check { limits: limits(2) }, T0 + 500);
        let GuardReply::Limited { retry_after_ms, quota } = r else { panic!("{r:?}") };
        assert_eq!(retry_after_ms, 1000 + 60_000 - 1 - 500);
        assert_eq!(
            quota.headers(),
            [
                ("RateLimit-Limit", "2".to_owned()),
                ("RateLimit-Remaining", "0".to_owned()),
                ("RateLimit-Reset", "61".to_owned())
            ]
        );
    }

    #[test]
    fn wire_format_round_trips() {
        let req = GuardRequest::Check { limits: limits(3) };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"op":"check","limits":[{"name":"minute","limit":3,"window_seconds":60}]}"#);
        assert_eq!(serde_json::from_str::<GuardRequest>(&json).unwrap(), req);
        let rep = GuardReply::Revoked;
        assert_eq!(serde_json::to_string(&rep).unwrap(), r#"{"outcome":"revoked"}"#);
    }
}
