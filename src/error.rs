//! The error catalogue: every error keyward can answer with, and the one
//! envelope they are rendered into (`seeds/000_*`):
//!
//! ```json
//! {"success":false,"error":{"code":"…","type":"…","message":"…","retryable":false,"request_id":"req_…"}}
//! ```
//!
//! One table ([`catalogue!`]) generates the codes, statuses, types, retry
//! flags and default messages, so a code can never drift from its status.

use std::borrow::Cow;

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal, $ty:literal, $retry:literal, $msg:literal); )*) => {
        /// Every error code keyward can emit. The wire code, HTTP status,
        /// error type, retry flag and default message come from one table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// All codes, in catalogue order (used by the README and tests).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable wire code, e.g. `INVALID_API_KEY`.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }
            /// The HTTP status this code is answered with.
            pub const fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }
            /// The error `type` field.
            pub const fn kind(self) -> &'static str {
                match self { $(ErrorCode::$variant => $ty,)* }
            }
            /// Whether the same request may succeed if retried later.
            pub const fn retryable(self) -> bool {
                match self { $(ErrorCode::$variant => $retry,)* }
            }
            /// The public message used when no more specific one is given.
            pub const fn default_message(self) -> &'static str {
                match self { $(ErrorCode::$variant => $msg,)* }
            }
        }
    };
}

catalogue! {
    /// The request itself is unacceptable: a path with dot segments, encoded
    /// separators, control bytes, duplicate slashes; an unusable header.
    InvalidRequest = ("INVALID_REQUEST", 400, "invalid_request_error", false,
        "The request is malformed.");
    /// Missing, malformed, unknown, revoked or expired key, or two different
    /// credentials. Deliberately one message for all: no oracle.
    InvalidApiKey = ("INVALID_API_KEY", 401, "authentication_error", false,
        "The API key is missing, malformed, expired, revoked or unknown.");
    /// A JWT (`Authorization: Bearer eyJ…`) that does not verify: malformed,
    /// bad signature, unknown key, expired, not yet valid, wrong issuer or
    /// audience, a disabled user, a revoked session. One message for all.
    InvalidToken = ("INVALID_TOKEN", 401, "authentication_error", false,
        "The access token is invalid, expired or revoked. Sign in again.");
    /// The admin API was called without the right `ADMIN_TOKEN`.
    AdminUnauthorized = ("ADMIN_UNAUTHORIZED", 401, "authentication_error", false,
        "A valid admin token is required.");
    /// A secret-scanning report (`POST /v1/secret-scanning/verify`) whose
    /// signature does not verify with a key of `SECRET_SCANNING_KEYS`.
    SecretScanningUnauthorized = ("SECRET_SCANNING_UNAUTHORIZED", 401, "authentication_error", false,
        "The secret-scanning request is not signed by a configured key.");
    /// The key's organization has no active Business Associate Agreement.
    BaaRequired = ("BAA_REQUIRED", 402, "payment_required", false,
        "An active Business Associate Agreement is required to use the AI API.");
    /// The key is valid but lacks the scope the route requires.
    MissingScope = ("MISSING_SCOPE", 403, "permission_error", false,
        "The API key lacks the scope this route requires.");
    /// The calling key may not do this: mint a key for another user, mint
    /// keys with a role that may not, revoke a key it could not have minted.
    PermissionDenied = ("PERMISSION_DENIED", 403, "permission_error", false,
        "The API key may not perform this action.");
    /// The request came from an origin the key may not be used from.
    OriginNotAllowed = ("ORIGIN_NOT_ALLOWED", 403, "permission_error", false,
        "Requests from this origin are not allowed with this key.");
    /// The client's address (`CF-Connecting-IP`) is not in the key's
    /// `allowed_ips`.
    IpNotAllowed = ("IP_NOT_ALLOWED", 403, "permission_error", false,
        "Requests from this IP address are not allowed with this key.");
    /// A widget key that requires Cloudflare Turnstile, and the request
    /// carried neither a valid visitor token nor an acceptable Turnstile
    /// token.
    TurnstileRequired = ("TURNSTILE_REQUIRED", 403, "permission_error", false,
        "This widget key requires a Turnstile challenge: send its token in CF-Turnstile-Response.");
    /// No route in the policy matches the canonical path.
    RouteNotFound = ("ROUTE_NOT_FOUND", 404, "not_found_error", false,
        "No route matches this path.");
    /// An admin or control resource (org, user, key) does not exist.
    ResourceNotFound = ("RESOURCE_NOT_FOUND", 404, "not_found_error", false,
        "The resource was not found.");
    /// The path is a known route but not for this method (`Allow` lists them).
    MethodNotAllowed = ("METHOD_NOT_ALLOWED", 405, "invalid_request_error", false,
        "This route does not accept this method.");
    /// An admin request body over the size limit.
    PayloadTooLarge = ("PAYLOAD_TOO_LARGE", 413, "invalid_request_error", false,
        "The request body is too large.");
    /// The request body's `Content-Type` is missing or not one the route
    /// accepts (form bodies reach no route that does not list them).
    UnsupportedMediaType = ("UNSUPPORTED_MEDIA_TYPE", 415, "invalid_request_error", false,
        "The request body's content type is not accepted on this route.");
    /// Minting would pass the live keys an org (`MAX_KEYS_PER_ORG`) or a
    /// minting key (`MAX_KEYS_PER_PARENT`) may have.
    KeyLimitReached = ("KEY_LIMIT_REACHED", 409, "invalid_request_error", false,
        "The limit of live API keys is reached: revoke keys first.");
    /// An admin request body failed validation; the message names the field.
    ValidationFailed = ("VALIDATION_FAILED", 422, "validation_error", false,
        "The request body is invalid.");
    /// A rate limit of the key is exhausted (`Retry-After` says when to retry).
    RateLimited = ("RATE_LIMITED", 429, "rate_limit_error", true,
        "Rate limit exceeded. Retry after the number of seconds in Retry-After.");
    /// A usage-limited key has fewer credits left than the request costs
    /// (`Retry-After`: the next refill, when the key refills).
    UsageExceeded = ("USAGE_EXCEEDED", 429, "rate_limit_error", false,
        "This API key has no credits left for this request. Retry after the next refill (Retry-After) or top the key up.");
    /// A bug: keyward failed in a way it did not anticipate.
    InternalError = ("INTERNAL_ERROR", 500, "api_error", true,
        "An internal error occurred.");
    /// The origin could not be reached or failed before answering.
    OriginUnavailable = ("ORIGIN_UNAVAILABLE", 502, "upstream_error", true,
        "The origin service is unavailable.");
    /// A store (KV, Durable Object) or configuration could not be read;
    /// keyward refuses rather than allows.
    ServiceUnavailable = ("SERVICE_UNAVAILABLE", 503, "overloaded_error", true,
        "The service is temporarily unavailable. Retry shortly.");
    /// The origin did not answer within `ORIGIN_TIMEOUT_MS`.
    OriginTimeout = ("ORIGIN_TIMEOUT", 504, "upstream_error", true,
        "The origin service did not answer in time.");
}

/// An error to answer with: a catalogue code and, where useful, a more
/// specific public message (never containing a credential).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The catalogue entry.
    pub code: ErrorCode,
    message: Option<Cow<'static, str>>,
}

impl ApiError {
    /// An error with the catalogue's default message.
    pub const fn new(code: ErrorCode) -> Self {
        Self { code, message: None }
    }

    /// An error with a specific public message.
    pub fn with_message(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self { code, message: Some(message.into()) }
    }

    /// `422 VALIDATION_FAILED` whose message starts with the field name.
    pub fn validation(field: &str, problem: &str) -> Self {
        Self::with_message(ErrorCode::ValidationFailed, format!("{field}: {problem}"))
    }

    /// `400 INVALID_REQUEST` with a reason.
    pub fn invalid_request(reason: &'static str) -> Self {
        Self::with_message(ErrorCode::InvalidRequest, reason)
    }

    /// `403 MISSING_SCOPE` naming the scope.
    pub fn missing_scope(scope: &str) -> Self {
        Self::with_message(ErrorCode::MissingScope, format!("This API key lacks the required scope: {scope}"))
    }

    /// The public message.
    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or(self.code.default_message())
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON envelope body for this error.
    pub fn envelope(&self, request_id: &str) -> String {
        use crate::json::{obj, text};
        let error = obj(&[
            ("code", text(self.code.as_str())),
            ("message", text(self.message())),
            ("request_id", text(request_id)),
            ("retryable", text(&self.code.retryable())),
            ("type", text(self.code.kind())),
        ]);
        obj(&[("error", error), ("success", "false".into())])
    }
}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message())
    }
}

/// The success envelope around JSON text, as serde_json's `Value` writes it
/// (keys sorted: `{"data":…,"meta":…,"success":true}`, `meta` when given).
pub fn success(data: &str, meta: Option<&str>) -> String {
    match meta {
        Some(m) => format!("{{\"data\":{data},\"meta\":{m},\"success\":true}}"),
        None => format!("{{\"data\":{data},\"success\":true}}"),
    }
}

/// The success envelope around data already serialized to JSON text
/// (`{"success":true,"data":…}`), for internal replies whose data is a typed
/// record: no detour through `serde_json::Value`.
pub fn success_raw(data_json: &str) -> String {
    format!("{{\"success\":true,\"data\":{data_json}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_success_is_the_same_envelope() {
        let data = serde_json::json!({"a": [1, 2], "b": null});
        let raw: serde_json::Value = serde_json::from_str(&success_raw(&data.to_string())).unwrap();
        let built: serde_json::Value = serde_json::from_str(&success(&data.to_string(), None)).unwrap();
        assert_eq!(raw, built);
    }

    #[test]
    fn envelope_matches_seed_shape() {
        let body = ApiError::new(ErrorCode::BaaRequired).envelope("req_abc");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "success": false,
                "error": {
                    "code": "BAA_REQUIRED",
                    "type": "payment_required",
                    "message": "An active Business Associate Agreement is required to use the AI API.",
                    "retryable": false,
                    "request_id": "req_abc"
                }
            })
        );
    }

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c.as_str());
            assert!((400..600).contains(&c.status()));
            // Spent credits do not come back by retrying (a refill or a
            // top-up brings them); every other 429 and 5xx may.
            let spent = *c == ErrorCode::UsageExceeded;
            assert_eq!(c.retryable(), matches!(c.status(), 429 | 500..=599) && !spent);
        }
    }

    #[test]
    fn readme_lists_every_code() {
        let readme = include_str!("../README.md");
        for c in ErrorCode::ALL {
            let row = format!(
                "| `{}` | {} | `{}` | {} |",
                c.as_str(),
                c.status(),
                c.kind(),
                if c.retryable() { "yes" } else { "no" }
            );
            assert!(readme.contains(&row), "README error table lacks or misstates: {row}");
        }
    }

    #[test]
    fn messages_are_escaped() {
        let e = ApiError::validation("name", "contains \"quotes\"\n");
        let v: serde_json::Value = serde_json::from_str(&e.envelope("req_x")).unwrap();
        assert_eq!(v["error"]["message"], "name: contains \"quotes\"\n");
    }
}
