//! JWT sessions through the flow: a user's sessions are a strict,
//! user-bound secret key whose record is the token's, never read from KV.

use super::harness::*;
use super::*;
use crate::path::CanonicalPath;
use crate::records::UserRecord;
use crate::scope::Scope;

fn session(iat: i64, scopes: Option<&[&str]>) -> Session {
    Session {
        org_id: "org_1".into(),
        user_id: "user_1".into(),
        issued_at: iat,
        expires_at: T0 + 900_000,
        jti: Some(format!("jti-{iat}")),
        scopes: scopes.map(|s| s.iter().map(|x| Scope::parse(x).unwrap()).collect()),
    }
}

fn store_with_user(role: &str) -> Store {
    let mut store = Store::default();
    store.org(true);
    set_user(&mut store, role, false);
    store
}

fn set_user(store: &mut Store, role: &str, disabled: bool) {
    let u = UserRecord { id: "user_1".into(), org_id: "org_1".into(), role: role.into(), disabled, updated_at: 0 };
    store.kv_users.insert(u.id.clone(), u);
}

/// Runs one session request to its end (admissions served): the grant, or
/// the refusal; and the guard requests it made.
fn run(
    env: &Env,
    store: &mut Store,
    iso: &mut Isolate,
    s: &Session,
    method: &str,
    path: &str,
    now: i64,
) -> (Result<Grant, Refusal>, Vec<GuardRequest>) {
    let path = CanonicalPath::parse(path).unwrap();
    let facts =
        Facts { has_body: method == "POST", content_type: Some("application/json"), ..Facts::bare(method, &path) };
    let mut g = Gate::session(facts, s, "203.0.113.9", &env.policy, &env.config, env.settings);
    let mut asked = Vec::new();
    for _ in 0..40 {
        let records = |store: &mut Store, user_id: Option<String>| {
            store.kv_reads += 1;
            Ok((store.kv_orgs.get("org_1").cloned(), user_id.and_then(|u| store.kv_users.get(&u).cloned())))
        };
        match g.next(iso, now) {
            Next::ReadKey => panic!("a session's record is the token's: no key read"),
            Next::ReadRecords { user_id, .. } => g.records_read(records(store, user_id)),
            Next::ReadRecordsAndAsk { user_id, key_id, request, .. } => {
                g.records_read(records(store, user_id));
                asked.push(request.clone());
                g.guard_replied(store.call(&key_id, &request, now, env));
            }
            Next::Ask { key_id, request } => {
                asked.push(request.clone());
                g.guard_replied(store.call(&key_id, &request, now, env));
            }
            Next::Wait { .. } | Next::VerifyTurnstile { .. } => panic!("not for a session"),
            Next::Refuse(r) => {
                store.run_later(iso, g.take_later(), now, env);
                return (Err(r), asked);
            }
            Next::Admit(a) => {
                a.admission.served();
                store.run_later(iso, g.take_later(), now, env);
                return (Ok(a.grant), asked);
            }
        }
    }
    panic!("no end")
}

fn code(r: &Result<Grant, Refusal>) -> Option<ErrorCode> {
    r.as_ref().err().map(|r| r.error.code)
}

#[test]
fn a_session_acts_as_its_user_with_the_roles_scopes_narrowed_by_the_claim() {
    let env = env();
    let mut store = store_with_user("operator");
    let mut iso = Isolate::new([1; 16]);
    let s = session(T0 - 5000, None);
    let (g, asked) = run(&env, &mut store, &mut iso, &s, "POST", "/v1/documents", T0);
    let g = g.unwrap();
    assert_eq!(g.auth, Auth::Jwt { token_id: Some(format!("jti-{}", T0 - 5000)) });
    assert_eq!(
        (g.org_id.as_str(), g.user_id.as_deref(), g.user_role.as_deref()),
        ("org_1", Some("user_1"), Some("operator"))
    );
    assert_eq!(g.key_id, "ses:org_1:user_1");
    let scopes: Vec<&str> = g.scopes.iter().map(Scope::as_str).collect();
    assert_eq!(scopes, ["ai:*", "control:read"], "the role's scopes");
    // The guard is the user's, and is told the token's issue time.
    let GuardRequest::Check { key, limits, .. } = &asked[0] else { panic!("{asked:?}") };
    assert_eq!((key.key_id.as_str(), key.issued_at), ("ses:org_1:user_1", Some(T0 - 5000)));
    assert_eq!(limits.key, env.policy.default_rate_limits(), "no per-role session limits in this policy");
    // A `scope` claim narrows, never widens: a viewer's token claiming
    // documents gets nothing it could not do as a viewer.
    set_user(&mut store, "viewer", false);
    let narrow = session(T0 - 4000, Some(&["ai:chat", "ai:documents"]));
    let (g, _) = run(&env, &mut store, &mut iso, &narrow, "POST", "/v1/ai/chat", T0);
    assert_eq!(g.unwrap().scopes.iter().map(Scope::as_str).collect::<Vec<_>>(), ["ai:chat"]);
    let (r, _) = run(&env, &mut store, &mut iso, &narrow, "POST", "/v1/documents", T0);
    let r = r.unwrap_err();
    assert_eq!(r.error.code, ErrorCode::MissingScope);
    assert_eq!(r.error.message(), "This session lacks the required scope: ai:documents");
}

#[test]
fn revoked_sessions_disabled_and_unknown_users_are_invalid_tokens() {
    let env = env();
    let mut store = store_with_user("viewer");
    let mut iso = Isolate::new([2; 16]);
    let old = session(T0 - 5000, None);
    assert!(run(&env, &mut store, &mut iso, &old, "POST", "/v1/ai/chat", T0).0.is_ok());
    let revoke = GuardRequest::RevokeSessions { revoked_at: T0 + 10 };
    assert!(matches!(store.call("ses:org_1:user_1", &revoke, T0 + 10, &env), Ok(GuardReply::RevokeRecorded { .. })));
    let (r, _) = run(&env, &mut store, &mut iso, &old, "POST", "/v1/ai/chat", T0 + 20);
    assert_eq!(code(&r), Some(ErrorCode::InvalidToken));
    // The isolate remembers: the next request of that token asks nobody.
    let calls = store.guard_calls;
    let (r, asked) = run(&env, &mut store, &mut iso, &old, "POST", "/v1/ai/chat", T0 + 30);
    assert_eq!((code(&r), asked.len(), store.guard_calls), (Some(ErrorCode::InvalidToken), 0, calls));
    // A token issued after the revocation is the user's new session.
    let new = session(T0 + 11, None);
    assert!(run(&env, &mut store, &mut iso, &new, "POST", "/v1/ai/chat", T0 + 40).0.is_ok());
    // A disabled user, and a user the org does not have: the same 401.
    set_user(&mut store, "viewer", true);
    assert_eq!(
        code(&run(&env, &mut store, &mut iso, &new, "POST", "/v1/ai/chat", T0 + 50).0),
        Some(ErrorCode::InvalidToken)
    );
    store.kv_users.clear();
    assert_eq!(
        code(&run(&env, &mut store, &mut iso, &new, "POST", "/v1/ai/chat", T0 + 60).0),
        Some(ErrorCode::InvalidToken)
    );
    // An expired session record (exp + leeway passed) is refused too.
    set_user(&mut store, "viewer", false);
    let mut expired = session(T0 + 12, None);
    expired.expires_at = T0 + 70;
    assert_eq!(
        code(&run(&env, &mut store, &mut iso, &expired, "POST", "/v1/ai/chat", T0 + 70).0),
        Some(ErrorCode::InvalidToken)
    );
}

#[test]
fn a_users_limit_counts_every_token_and_per_role_limits_read_the_role_first() {
    let env = env();
    let mut store = store_with_user("viewer");
    let mut iso = Isolate::new([3; 16]);
    let (a, b) = (session(T0 - 5000, None), session(T0 - 4000, None));
    let mut admitted = 0;
    for i in 0..70 {
        let s = if i % 2 == 0 { &a } else { &b };
        if run(&env, &mut store, &mut iso, s, "POST", "/v1/ai/chat", T0 + i).0.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 60, "one limit per user, whichever token");

    // A policy with limits per role: the records are read before the guard
    // is asked, and the check carries the role's limits.
    let mut json: serde_json::Value = serde_json::from_str(crate::policy::DEFAULT_POLICY_JSON).unwrap();
    json["session_rate_limits"] =
        serde_json::json!({"viewer": [{"name": "viewer_minute", "limit": 3, "window_seconds": 60}]});
    let env = Env { policy: Policy::from_json(&json.to_string()).unwrap(), ..env };
    let mut store = store_with_user("viewer");
    let mut iso = Isolate::new([4; 16]);
    let mut codes = Vec::new();
    for i in 0..4 {
        let (r, asked) = run(&env, &mut store, &mut iso, &a, "POST", "/v1/ai/chat", T0 + i);
        if let Some(GuardRequest::Check { limits, .. }) = asked.first() {
            assert_eq!(limits.key[0].name, "viewer_minute");
        }
        codes.push(code(&r));
    }
    assert_eq!(codes, [None, None, None, Some(ErrorCode::RateLimited)]);
}

#[test]
fn public_routes_count_per_client_address_and_forward_no_identity() {
    let env = env();
    let path = CanonicalPath::parse("/api/v1/auth/login").unwrap();
    let route = env.policy.route("POST", &path).unwrap();
    assert!(route.public_limits().is_some());
    let json = Facts { has_body: true, content_type: Some("application/json"), ..Facts::bare("POST", &path) };
    let (id, q) = public_question(&json, route, "2001:db8:1:2::7", &env.config).unwrap();
    assert_eq!(id, "ip:2001:db8:1::/48", "IPv6 clients by prefix, as widget visitors");
    let (id4, _) = public_question(&json, route, "198.51.100.7", &env.config).unwrap();
    assert_eq!(id4, "ip:198.51.100.7");
    let GuardRequest::Check { key, limits, .. } = &q else { panic!("{q:?}") };
    assert_eq!((key.org_id.as_str(), limits.key[0].limit), ("", 10));
    // Refused before the guard: a form body, a browser origin not allowed.
    let form = Facts { content_type: Some("application/x-www-form-urlencoded"), ..json };
    let e = public_question(&form, route, "198.51.100.7", &env.config).unwrap_err();
    assert_eq!(e.error.code, ErrorCode::UnsupportedMediaType);
    let browser = Facts { origin: Some("https://evil.example"), ..json };
    let e = public_question(&browser, route, "198.51.100.7", &env.config).unwrap_err();
    assert_eq!(e.error.code, ErrorCode::OriginNotAllowed);
    // keyward's own origin (the console's sign-in) is accepted.
    let console = Facts { origin: Some("https://edge.example"), same_origin: true, ..json };
    assert!(public_question(&console, route, "198.51.100.7", &env.config).is_ok());
    // Ten admitted, the eleventh limited with its headers; no answer is a 503.
    let mut store = Store::default();
    for i in 0..11 {
        let reply = store.call(&id4, &q, T0 + i, &env);
        match public_answer(&json, route, &env.config, &q, reply, T0 + i) {
            Ok(a) => {
                assert!(i < 10, "request {i} admitted");
                assert_eq!((a.grant.auth, a.grant.org_id.as_str(), a.grant.scopes.len()), (Auth::Public, "", 0));
                a.admission.served();
            }
            Err(r) => {
                assert_eq!((i, r.error.code), (10, ErrorCode::RateLimited));
                assert!(r.header("retry-after").is_some() && r.header("ratelimit-remaining") == Some("0"));
            }
        }
    }
    let e = public_answer(&json, route, &env.config, &q, Err("down".into()), T0).unwrap_err();
    assert_eq!(e.error.code, ErrorCode::ServiceUnavailable);
}

#[test]
fn a_token_naming_an_unknown_org_or_user_is_refused_without_asking_any_guard() {
    let env = env();
    let mut store = store_with_user("viewer");
    let mut iso = Isolate::new([5; 16]);
    let stranger = Session { user_id: "user_9".into(), ..session(T0 - 5000, None) };
    let (r, asked) = run(&env, &mut store, &mut iso, &stranger, "POST", "/v1/ai/chat", T0);
    assert_eq!((code(&r), asked.len(), store.guard_calls), (Some(ErrorCode::InvalidToken), 0, 0));
    let elsewhere = Session { org_id: "org_9".into(), ..session(T0 - 4000, None) };
    let (r, asked) = run(&env, &mut store, &mut iso, &elsewhere, "POST", "/v1/ai/chat", T0);
    assert_eq!((code(&r), asked.len()), (Some(ErrorCode::InvalidToken), 0), "a 401, not a 503 of an incomplete read");
    // A known user's first request reads first too; later ones ask the
    // guard concurrently with the read.
    let known = session(T0 - 3000, None);
    assert!(run(&env, &mut store, &mut iso, &known, "POST", "/v1/ai/chat", T0).0.is_ok());
    let reads = store.kv_reads;
    assert!(run(&env, &mut store, &mut iso, &known, "POST", "/v1/ai/chat", T0 + 1).0.is_ok());
    assert_eq!(store.kv_reads, reads + 1);
}
