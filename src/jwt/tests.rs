use hmac::{Hmac, Mac};
use serde_json::json;

use super::*;

const NOW: i64 = 1_800_000_000_000;
const NOW_S: i64 = NOW / 1000;
const SECRET: &[u8] = b"a-shared-secret-of-at-least-32-bytes!!";

fn cfg() -> JwtConfig {
    JwtConfig { hs256_secret: Some(SECRET.to_vec()), ..JwtConfig::new("https://idp.example", "api") }
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://idp.example", "aud": "api", "sub": "user_1", "org_id": "org_1",
           "iat": NOW_S - 10, "exp": NOW_S + 900, "jti": "t-1"})
}

/// A token of raw header and payload texts, HMAC-signed with `SECRET`.
fn raw(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64url_encode(header.as_bytes()), b64url_encode(payload.as_bytes()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url_encode(&mac.finalize().into_bytes()))
}

fn hs(claims: &serde_json::Value) -> String {
    raw(r#"{"alg":"HS256","typ":"JWT"}"#, &claims.to_string())
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    hs(&c)
}

fn reject(token: &str) -> Reject {
    check(token, &cfg(), NOW).unwrap_err()
}

#[test]
fn base64url_is_strict_and_round_trips() {
    for len in 0..40 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(b64url_decode(&b64url_encode(&bytes)).unwrap(), bytes);
    }
    assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
    for bad in ["A", "AB=", "a+b/", "AB\n", "QR", "QUF", "A===", "QUJ"] {
        // "QR" and "QUJ" leave non-zero unused bits: another spelling of bytes.
        assert!(b64url_decode(bad).is_none(), "{bad:?}");
    }
    assert_eq!(b64url_decode("QQ").unwrap(), b"A");
}

#[test]
fn only_jwt_shaped_credentials_are_tokens() {
    assert!(looks_like_jwt("eyJhbGciOi.eyJ.sig"));
    assert!(looks_like_jwt("eyJhbGciOi.eyJ."), "alg none: still a token, and refused as one");
    assert!(!looks_like_jwt("kw_live_abc"));
    assert!(!looks_like_jwt("eyJa.b"));
    assert!(!looks_like_jwt("eyJa.b.c.d"));
}

#[test]
fn a_valid_token_carries_its_session() {
    let token = hs(&claims());
    let c = check(&token, &cfg(), NOW).unwrap();
    assert_eq!(c.alg, Alg::Hs256);
    verify_hs256(&c, &cfg()).unwrap();
    assert_eq!(
        c.session,
        Session {
            org_id: "org_1".into(),
            user_id: "user_1".into(),
            issued_at: (NOW_S - 10 - DEFAULT_LEEWAY_SECONDS) * 1000,
            expires_at: (NOW_S + 900 + DEFAULT_LEEWAY_SECONDS) * 1000,
            jti: Some("t-1".into()),
            scopes: None,
        }
    );
    assert_eq!(c.signing_input, &token[..token.rfind('.').unwrap()]);
}

#[test]
fn a_changed_byte_fails_the_signature() {
    let token = hs(&claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut forged = with(|c| {
        c.insert("sub".into(), json!("user_2"));
    });
    forged = format!("{}.{sig}", &forged[..forged.rfind('.').unwrap()]);
    let c = check(&forged, &cfg(), NOW).unwrap();
    assert_eq!(verify_hs256(&c, &cfg()), Err(Reject::Signature));
    // The signature of another input, and a truncated one.
    let cut = format!("{input}.{}", b64url_encode(&b64url_decode(sig).unwrap()[..31]));
    let c = check(&cut, &cfg(), NOW).unwrap();
    assert_eq!(verify_hs256(&c, &cfg()), Err(Reject::Signature));
}

#[test]
fn algorithms_and_headers() {
    let body = claims().to_string();
    let none = format!("{}.{}.", b64url_encode(br#"{"alg":"none","typ":"JWT"}"#), b64url_encode(body.as_bytes()));
    assert_eq!(reject(&none), Reject::Header);
    for h in [
        r#"{"alg":"None"}"#,
        r#"{"alg":"HS512"}"#,
        r#"{"alg":"hs256"}"#,
        r#"{"typ":"JWT"}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","typ":"JWE"}"#,
        r#"{"alg":"HS256","kid":7}"#,
        r#"{"alg":"EdDSA"}"#,
        r#"{"alg":"ES256","typ":"JWT"}"#,
    ] {
        assert_eq!(reject(&raw(h, &body)), Reject::Header, "{h}");
    }
    for h in [r#"{"alg":"HS256","typ":"at+jwt"}"#, r#"{"alg":"HS256"}"#, r#"{"alg":"EdDSA","kid":"k"}"#] {
        assert!(check(&raw(h, &body), &cfg(), NOW).is_ok(), "{h}");
    }
    // HS256 only with a configured secret.
    let no_secret = JwtConfig { hs256_secret: None, ..cfg() };
    assert_eq!(check(&hs(&claims()), &no_secret, NOW).unwrap_err(), Reject::Header);
}

#[test]
fn malformed_tokens() {
    let good = hs(&claims());
    let (h, rest) = good.split_once('.').unwrap();
    for bad in [
        format!("{good}.x"),
        format!("{h}=.{rest}"),
        format!("{h}+.{rest}"),
        format!("{}.{rest}", b64url_encode(b"[1]")),
        format!("{}.{rest}", b64url_encode(b"{\"alg\":\"HS256\"")),
        format!("{}.{rest}", b64url_encode(&[0xff, 0xfe])),
        "eyJ..".to_owned(),
    ] {
        assert_eq!(reject(&bad), Reject::Malformed, "{bad}");
    }
    let huge = with(|c| {
        c.insert("pad".into(), json!("x".repeat(MAX_TOKEN_LEN)));
    });
    assert_eq!(reject(&huge), Reject::Malformed);
}

#[test]
fn duplicate_keys_are_refused_in_header_and_payload() {
    let body = claims().to_string();
    assert_eq!(reject(&raw(r#"{"alg":"HS256","alg":"HS256"}"#, &body)), Reject::Malformed);
    let twice = body.replacen("\"sub\":\"user_1\"", "\"sub\":\"user_1\",\"sub\":\"admin\"", 1);
    assert_ne!(twice, body);
    assert_eq!(reject(&raw(r#"{"alg":"HS256"}"#, &twice)), Reject::Malformed);
    // Another spelling of a key is refused too; keys of nested objects and
    // look-alikes inside strings are not top-level keys.
    let escaped = body.replacen("\"sub\"", "\"\\u0073ub\"", 1);
    assert_eq!(reject(&raw(r#"{"alg":"HS256"}"#, &escaped)), Reject::Malformed);
    let mut c = claims();
    c["nested"] = json!({"sub": "x", "iss": {"sub": 1}});
    c["note"] = json!("\"sub\": \"admin\", {[");
    c["list"] = json!([{"sub": 2}, "sub"]);
    let s = check(&hs(&c), &cfg(), NOW).unwrap().session;
    assert_eq!(s.user_id, "user_1");
    assert_eq!(top_level_keys(r#"{"a":1, "b" : {"a":2}, "c":"\"a\":"}"#).unwrap(), ["a", "b", "c"]);
}

#[test]
fn lifetime_at_the_boundaries_of_the_leeway() {
    let l = DEFAULT_LEEWAY_SECONDS;
    let exp = |e: i64| {
        with(|c| {
            c.insert("exp".into(), json!(e));
        })
    };
    assert!(check(&exp(NOW_S - l + 1), &cfg(), NOW).is_ok(), "expired less than the leeway ago");
    assert_eq!(reject(&exp(NOW_S - l)), Reject::Claims, "expired exactly the leeway ago");
    let nbf = |n: i64| {
        with(|c| {
            c.insert("nbf".into(), json!(n));
        })
    };
    assert!(check(&nbf(NOW_S + l), &cfg(), NOW).is_ok());
    assert_eq!(reject(&nbf(NOW_S + l + 1)), Reject::Claims);
    let t = with(|c| {
        c.insert("nbf".into(), json!("soon"));
    });
    assert_eq!(reject(&t), Reject::Claims, "nbf must be a number");
    let iat = |i: i64| {
        with(|c| {
            c.insert("iat".into(), json!(i));
        })
    };
    assert!(check(&iat(NOW_S + l), &cfg(), NOW).is_ok());
    assert_eq!(reject(&iat(NOW_S + l + 1)), Reject::Claims, "issued in the future");
    // A smaller leeway moves every boundary; it is never above 60 s.
    let tight = JwtConfig { leeway_s: 0, ..cfg() };
    assert_eq!(check(&exp(NOW_S), &tight, NOW).unwrap_err(), Reject::Claims);
    assert!(check(&exp(NOW_S + 1), &tight, NOW).is_ok());
    let loose = JwtConfig { leeway_s: 3600, ..cfg() };
    assert_eq!(check(&exp(NOW_S - 61), &loose, NOW).unwrap_err(), Reject::Claims);
    // Issued more than JWT_MAX_AGE_SECONDS ago: refused whatever exp says.
    let old = with(|c| {
        c.insert("iat".into(), json!(NOW_S - DEFAULT_MAX_AGE_SECONDS - l - 1));
        c.insert("exp".into(), json!(NOW_S + 10 * 365 * 86_400));
    });
    assert_eq!(reject(&old), Reject::Claims);
    assert!(check(&old, &JwtConfig { max_age_s: 0, ..cfg() }, NOW).is_ok(), "0: no limit");
    let day = with(|c| {
        c.insert("iat".into(), json!(NOW_S - DEFAULT_MAX_AGE_SECONDS - l));
    });
    assert!(check(&day, &cfg(), NOW).is_ok());
    // Required, and numbers.
    for missing in ["exp", "iat"] {
        let t = with(|c| {
            c.remove(missing);
        });
        assert_eq!(reject(&t), Reject::Claims, "{missing}");
    }
    let t = with(|c| {
        c.insert("exp".into(), json!("2030-01-01"));
    });
    assert_eq!(reject(&t), Reject::Claims);
    let t = with(|c| {
        c.insert("exp".into(), json!(NOW_S as f64 + 100.5));
    });
    assert!(check(&t, &cfg(), NOW).is_ok(), "a NumericDate may have a fraction");
}

#[test]
fn issuer_audience_and_identity_claims() {
    let set = |k: &str, v: serde_json::Value| {
        with(|c| {
            c.insert(k.into(), v);
        })
    };
    assert_eq!(reject(&set("iss", json!("https://evil.example"))), Reject::Claims);
    assert_eq!(reject(&set("iss", json!(["https://idp.example"]))), Reject::Claims);
    assert_eq!(reject(&with(|c| drop(c.remove("iss")))), Reject::Claims);
    assert_eq!(reject(&set("aud", json!("other"))), Reject::Claims);
    assert_eq!(reject(&set("aud", json!(["other", "x"]))), Reject::Claims);
    assert_eq!(reject(&with(|c| drop(c.remove("aud")))), Reject::Claims);
    assert!(check(&set("aud", json!(["other", "api"])), &cfg(), NOW).is_ok());
    for bad in [json!(""), json!("a b"), json!("x".repeat(65)), json!(5), json!("../org")] {
        assert_eq!(reject(&set("sub", bad.clone())), Reject::Claims, "sub {bad}");
        assert_eq!(reject(&set("org_id", bad.clone())), Reject::Claims, "org {bad}");
    }
    assert_eq!(reject(&with(|c| drop(c.remove("org_id")))), Reject::Claims);
    for bad in [json!(""), json!(1), json!("has space"), json!("x".repeat(129))] {
        assert_eq!(reject(&set("jti", bad.clone())), Reject::Claims, "jti {bad}");
    }
    // Other claim names, from configuration.
    let named = JwtConfig { org_claim: "tenant".into(), user_claim: "uid".into(), ..cfg() };
    let t = with(|c| {
        c.insert("tenant".into(), json!("org_9"));
        c.insert("uid".into(), json!("user_9"));
    });
    let s = check(&t, &named, NOW).unwrap().session;
    assert_eq!((s.org_id.as_str(), s.user_id.as_str()), ("org_9", "user_9"));
    assert_eq!(check(&hs(&claims()), &named, NOW).unwrap_err(), Reject::Claims);
}

#[test]
fn the_scope_claim_only_narrows() {
    let scoped = |v: serde_json::Value| {
        check(
            &with(|c| {
                c.insert("scope".into(), v);
            }),
            &cfg(),
            NOW,
        )
        .map(|c| c.session.scopes)
    };
    let names = |v: Vec<Scope>| v.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(names(scoped(json!("ai:chat openid  ai:*")).unwrap().unwrap()), ["ai:chat", "ai:*"]);
    assert_eq!(names(scoped(json!(["ai:chat", 5, "x"])).unwrap().unwrap()), ["ai:chat"]);
    assert_eq!(scoped(json!("openid profile email")).unwrap(), None, "no keyward scope: not about this API");
    assert_eq!(scoped(json!("")).unwrap(), None);
    assert_eq!(scoped(json!(5)).unwrap_err(), Reject::Claims);
}

fn ed(kid: &str) -> serde_json::Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[7; 32]), "kid": kid, "alg": "EdDSA", "use": "sig"})
}

fn rsa(kid: &str, bytes: usize, alg: Option<&str>) -> serde_json::Value {
    let mut n = vec![0xc5; bytes];
    n[0] = 0xd1;
    let mut k = json!({"kty": "RSA", "n": b64url_encode(&n), "e": "AQAB", "kid": kid});
    if let Some(a) = alg {
        k["alg"] = json!(a);
    }
    k
}

fn ec(kid: &str) -> serde_json::Value {
    json!({"kty": "EC", "crv": "P-256", "x": b64url_encode(&[1; 32]), "y": b64url_encode(&[2; 32]), "kid": kid})
}

#[test]
fn key_sets_keep_only_keys_that_verify_one_algorithm() {
    let doc = json!({"keys": [
        ed("ed-1"),
        ec("es-1"),
        rsa("rs-1", 256, Some("RS256")),
        rsa("rs-small", 128, None),
        // 2041 bits in 256 bytes: below 2048 however many bytes it takes.
        json!({"kty": "RSA", "n": b64url_encode(&[&[0x01][..], &[0xc5; 255][..]].concat()), "e": "AQAB", "kid": "rs-2041"}),
        json!({"kty": "RSA", "n": b64url_encode(&[0xd1; 256]), "e": "AQ", "kid": "rs-e1"}),
        json!({"kty": "RSA", "n": b64url_encode(&[0xd1; 256]), "e": "AAE", "kid": "rs-e-even"}),
        json!({"kty": "RSA", "n": b64url_encode(&[0xd1; 256]), "e": "AQAAAAE", "kid": "rs-e-long"}),
        rsa("rs-hs", 256, Some("HS256")),
        rsa("rs-ps", 256, Some("PS256")),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "oct", "alg": "HS256"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[7; 32]), "kid": "enc", "use": "enc"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[7; 32]), "d": "cHJpdmF0ZQ", "kid": "private"},
        {"kty": "OKP", "crv": "Ed448", "x": "AA", "kid": "ed448"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[7; 31]), "kid": "short"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[7; 32])},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[8; 32]), "kid": "ed-1"},
    ]});
    let set = Jwks::parse(&doc.to_string()).unwrap();
    let kids: Vec<(&str, Alg)> = set.keys.iter().map(|k| (k.kid.as_str(), k.alg)).collect();
    assert_eq!(kids, [("ed-1", Alg::EdDsa), ("es-1", Alg::Es256), ("rs-1", Alg::Rs256)]);
    // What WebCrypto imports: the public parts only, the first "ed-1".
    let imported: serde_json::Value = serde_json::from_str(&set.get("ed-1").unwrap().import).unwrap();
    assert_eq!(imported, json!({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(&[7; 32])}));
    assert!(Jwks::parse("[]").is_err());
    assert!(Jwks::parse("{\"keys\":{}}").is_err());
    assert!(Jwks::parse(&" ".repeat(MAX_JWKS_LEN + 1)).is_err());
    let many: Vec<_> = (0..40).map(|i| ed(&format!("k{i}"))).collect();
    assert_eq!(Jwks::parse(&json!({ "keys": many }).to_string()).unwrap().keys.len(), MAX_KEYS);
}

fn public_token(alg: &str, kid: &str, sig_len: usize) -> String {
    format!(
        "{}.{}.{}",
        b64url_encode(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#).as_bytes()),
        b64url_encode(claims().to_string().as_bytes()),
        b64url_encode(&vec![3; sig_len])
    )
}

fn inline(keys: Vec<serde_json::Value>) -> KeySet {
    KeySet {
        inline: Jwks::parse(&json!({ "keys": keys }).to_string()).unwrap(),
        cache_ms: DEFAULT_CACHE_SECONDS * 1000,
        ..KeySet::default()
    }
}

#[test]
fn keys_are_picked_by_kid_and_must_be_for_the_tokens_algorithm() {
    let set = inline(vec![ed("ed-1"), ed("ed-2"), ec("es-1"), rsa("rs-1", 256, None)]);
    let pick = |t: &str| {
        let c = check(t, &cfg(), NOW).unwrap();
        key_for(&c, &set, NOW).map(|l| match l {
            Lookup::Found(k) => k.kid.clone(),
            other => format!("{other:?}"),
        })
    };
    // Rotation: each token verifies with the key its kid names.
    assert_eq!(pick(&public_token("EdDSA", "ed-1", 64)).unwrap(), "ed-1");
    assert_eq!(pick(&public_token("EdDSA", "ed-2", 64)).unwrap(), "ed-2");
    assert_eq!(pick(&public_token("ES256", "es-1", 64)).unwrap(), "es-1");
    assert_eq!(pick(&public_token("RS256", "rs-1", 256)).unwrap(), "rs-1");
    // No algorithm confusion: a key verifies only its own algorithm.
    assert_eq!(pick(&public_token("ES256", "ed-1", 64)), Err(Reject::UnknownKey));
    assert_eq!(pick(&public_token("RS256", "es-1", 256)), Err(Reject::UnknownKey));
    let hs_with_ed_kid = raw(r#"{"alg":"HS256","kid":"ed-1"}"#, &claims().to_string());
    let c = check(&hs_with_ed_kid, &cfg(), NOW).unwrap();
    assert_eq!(c.alg, Alg::Hs256, "HS256 is verified with JWT_HS256_SECRET only, never a key of the set");
    assert_eq!(key_for(&c, &set, NOW), Err(Reject::UnknownKey), "no key of the set verifies an HS256 token");
    // Unknown kid; wrong signature lengths.
    assert_eq!(pick(&public_token("EdDSA", "ed-9", 64)), Err(Reject::UnknownKey));
    assert_eq!(pick(&public_token("EdDSA", "ed-1", 63)), Err(Reject::Signature));
    assert_eq!(pick(&public_token("RS256", "rs-1", 100)), Err(Reject::Signature));
    assert_eq!(pick(&public_token("RS256", "rs-1", 257)), Err(Reject::Signature), "exactly the modulus's length");
}

#[test]
fn a_fetched_key_set_is_refreshed_for_an_unknown_kid_at_most_once_a_minute() {
    let mut set = KeySet { has_url: true, cache_ms: 300_000, ..KeySet::default() };
    assert_eq!(set.lookup("ed-1", NOW), Lookup::Fetch, "nothing fetched yet");
    let first = Jwks::parse(&json!({"keys": [ed("ed-1")]}).to_string()).unwrap();
    set.fetched(Ok(first.clone()), NOW).unwrap();
    assert!(matches!(set.lookup("ed-1", NOW + 1), Lookup::Found(k) if k.kid == "ed-1"));
    // The set was just fetched: a kid it lacks is unknown (no second fetch
    // for a cold isolate: K6 of fuzz/README.md).
    assert_eq!(set.lookup("ed-2", NOW + 1), Lookup::Unknown);
    // A new kid (the provider rotated): one refresh a minute later...
    assert_eq!(set.lookup("ed-2", NOW + REFRESH_MIN_MS), Lookup::Fetch);
    set.fetched(Ok(first), NOW + 1).unwrap();
    // ...and no other within REFRESH_MIN_MS, however many tokens name it.
    assert_eq!(set.lookup("ed-2", NOW + 2), Lookup::Unknown);
    assert_eq!(set.lookup("ed-2", NOW + 1 + REFRESH_MIN_MS - 1), Lookup::Unknown);
    assert_eq!(set.lookup("ed-2", NOW + 1 + REFRESH_MIN_MS), Lookup::Fetch);
    let rotated = Jwks::parse(&json!({"keys": [ed("ed-1"), ed("ed-2")]}).to_string()).unwrap();
    set.fetched(Ok(rotated), NOW + 1 + REFRESH_MIN_MS).unwrap();
    assert!(matches!(set.lookup("ed-2", NOW + 2 + REFRESH_MIN_MS), Lookup::Found(_)));
    // Past its cache time the set is fetched again; a failed fetch is an
    // error (the request is a 503), and the stale set is not used.
    let later = NOW + 1 + REFRESH_MIN_MS + 300_000;
    assert_eq!(set.lookup("ed-1", later), Lookup::Fetch);
    assert!(set.fetched(Err("down".into()), later).is_err());
    // For a few seconds after a failure no request waits for another fetch.
    assert_eq!(set.lookup("ed-1", later), Lookup::Unavailable);
    assert_eq!(set.lookup("ed-1", later + FETCH_BACKOFF_MS - 1), Lookup::Unavailable);
    assert_eq!(set.lookup("ed-1", later + FETCH_BACKOFF_MS), Lookup::Fetch);
    set.fetched(Ok(Jwks::parse(&json!({"keys": [ed("ed-1")]}).to_string()).unwrap()), later + FETCH_BACKOFF_MS)
        .unwrap();
    assert!(matches!(set.lookup("ed-1", later + FETCH_BACKOFF_MS), Lookup::Found(_)));
    // Inline keys need no fetch; without a URL an unknown kid is unknown.
    let only_inline = inline(vec![ed("ed-1")]);
    assert!(matches!(only_inline.lookup("ed-1", NOW), Lookup::Found(_)));
    assert_eq!(only_inline.lookup("ed-2", NOW), Lookup::Unknown);
}

#[test]
fn session_guards_name_one_user_of_one_org() {
    assert_eq!(session_guard_id("org_a", "b_user"), "ses:org_a:b_user");
    assert_ne!(session_guard_id("org_a", "b_user"), session_guard_id("org_a_b", "user"));
    assert!(is_session_guard(&session_guard_id("o", "u")));
    assert!(!is_session_guard("01KEYULID0000000000000000"));
}
