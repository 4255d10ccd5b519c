//! The authorizer path, in three phases with one exit:
//!
//! - **admit**: the core's step machine ([`crate::flow::Gate`]) decides what
//!   comes next; this phase only does the KV reads and guard calls it asks
//!   for, and waits where it says another request is asking already;
//! - **upstream**: keyward's own control route, or the proxy to the origin;
//!   the admission ends as served, or refunded if the request is refused
//!   before it is sent;
//! - **respond**: the one exit, where the CORS and quota headers of an
//!   admitted request are applied once (and `Vary` appended, never replaced).
//!
//! Work for after the response (refunds, refusal reports, lease returns) is
//! handed to `waitUntil`.

use std::cell::RefCell;

use futures_util::future::{select, Either};
use worker::{Context, Delay, Env, Fetch, Headers, Method, Request, Response};

use super::faults::Fault;
use super::kv::KvNamespace;
use super::{control, count_io, now_ms, settings, unavailable, Io, Settings, KV_BINDING};
use crate::authorize::{extract_credential, has_body, needs_upload_guard, parse_key, Facts, Grant, Refusal};
use crate::cors;
use crate::error::{ApiError, ErrorCode};
use crate::flow::{Admitted, Gate, Isolate, Later, Next, SlotId};
use crate::guard::QuotaWire;
use crate::path::{check_query, own_origin, split_url, CanonicalPath};
use crate::records::{org_kv_key, user_kv_key, OrgRecord, UserRecord};
use crate::reply::{cache_control, dropped_response_header};
use crate::signing::{forwarded_headers, identity_headers};
use crate::turnstile;

thread_local! {
    /// What this isolate remembers between requests (keys, leases, refusals
    /// to report); bounded, see [`crate::flow`]. Borrowed only between
    /// awaits, never across one.
    static ISOLATE: RefCell<Isolate> = RefCell::new(Isolate::new(super::random::<16>().unwrap_or_default()));
}

/// The request as the gate and the proxy see it.
struct Incoming<'a> {
    req: Request,
    method: String,
    path: CanonicalPath,
    query: &'a str,
    client_ip: String,
    request_id: &'a str,
    now: i64,
}

pub(super) async fn handle(
    req: Request,
    env: &Env,
    ctx: &Context,
    request_id: &str,
    now: i64,
) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    let url = req.inner().url();
    let (raw_path, query) = split_url(&url);
    let path = CanonicalPath::parse(raw_path)?;
    check_query(query)?;

    let headers = req.headers();
    let method = req.inner().method();
    if method == "OPTIONS" {
        if let Some(requested) = headers.get("access-control-request-method").ok().flatten() {
            return preflight(settings, &path, headers.get("origin").ok().flatten().as_deref(), &requested, request_id);
        }
    }
    // A header value that is not a valid string is treated as absent here and
    // then fails the credential check; it never reaches a store.
    let authorization = headers.get("authorization").ok().flatten();
    let x_api_key = headers.get("x-api-key").ok().flatten();
    let origin = headers.get("origin").ok().flatten();
    let public_route = match settings.policy.match_route(&method, &path) {
        crate::policy::RouteMatch::Found(r) if r.public_limits().is_some() => Some(r),
        _ => None,
    };
    let credential = match public_route {
        Some(_) => Credential::None,
        None => {
            let token = extract_credential(authorization.as_deref(), x_api_key.as_deref())?;
            let session = super::jwt::session_of(settings, token, now).await.map_err(|mut r| {
                r.headers.extend(crate::flow::session_cors_headers(origin.as_deref(), &settings.config));
                r
            })?;
            match session {
                Some(session) => Credential::Session(session),
                None => Credential::Key(parse_key(&settings.config.format, token)?),
            }
        }
    };
    let referer = headers.get("referer").ok().flatten();
    let client_ip = cors::client_ip(
        headers.get("cf-connecting-ip").ok().flatten().as_deref(),
        headers.get("cf-connecting-ipv6").ok().flatten().as_deref(),
    )
    .unwrap_or_else(|| "unknown".to_owned());
    let content_type = headers.get("content-type").ok().flatten();
    let visitor_token = headers.get(turnstile::VISITOR_HEADER).ok().flatten();
    let turnstile_token = headers.get(turnstile::TURNSTILE_HEADER).ok().flatten();
    let content_length = headers.get("content-length").ok().flatten();
    let has_body = has_body(&method, req.inner().body().is_some(), content_length.as_deref());
    let fault = Fault::of(&req);
    let incoming = Incoming { req, method, path, query, client_ip, request_id, now };
    let facts = Facts {
        method: &incoming.method,
        path: &incoming.path,
        origin: origin.as_deref(),
        referer: referer.as_deref(),
        has_body,
        content_type: content_type.as_deref(),
        visitor_token: visitor_token.as_deref(),
        turnstile_token: turnstile_token.as_deref(),
        client_ip: &incoming.client_ip,
        same_origin: origin.as_deref().is_some_and(|o| o == own_origin(&url)),
    };
    let mut later = Vec::new();
    let mut exit = Vec::new();
    let asked = match (credential, public_route) {
        (_, Some(route)) => public(env, settings, &facts, route, &incoming.client_ip, fault).await,
        (credential, None) => {
            admit(env, settings, facts, credential, &incoming.client_ip, fault, &mut later, &mut exit).await
        }
    };
    let result = match asked {
        Ok(admitted) => {
            exit.extend(exit_headers(&admitted.grant, admitted.quota.as_ref()));
            if let Some(c) = admitted.credits {
                exit.push(("X-Credits-Remaining", c.to_string()));
            }
            upstream(incoming, env, settings, admitted, &mut later).await
        }
        Err(refusal) => Err(refusal),
    };
    run_later(ctx, env, later);
    Ok(respond(result, exit, request_id))
}

// ------------------------------------------------------------------ admit

/// What the request authenticates with.
enum Credential<'t> {
    /// An API key (format checked).
    Key(crate::token::ApiKey<'t>),
    /// A verified JWT.
    Session(crate::jwt::Session),
    /// Nothing: a public route.
    None,
}

/// A public route: the client address's guard counts it
/// ([`crate::flow::public_question`]), then it is proxied with no identity.
async fn public(
    env: &Env,
    settings: &Settings,
    facts: &Facts<'_>,
    route: &crate::policy::Route,
    client_ip: &str,
    fault: Fault,
) -> Result<Admitted, Refusal> {
    let (guard_id, question) = crate::flow::public_question(facts, route, client_ip, &settings.config)?;
    let reply = logged(super::guard::ask(env, &guard_id, &question, settings.guard_timeout_ms, fault).await);
    // Any answer but an admission or a limit is a 503: say which.
    let odd = match &reply {
        Ok(crate::guard::GuardReply::Allowed { .. } | crate::guard::GuardReply::Limited { .. }) | Err(_) => None,
        Ok(crate::guard::GuardReply::Revoked) => Some("revoked"),
        Ok(_) => Some("another reply"),
    };
    if let Some(what) = odd {
        worker::console_warn!("keyward: the per-address guard of {guard_id} answered {what}");
    }
    crate::flow::public_answer(facts, route, &settings.config, &question, reply, now_ms())
}

/// Runs the core's step machine to a decision, doing the I/O it asks for.
#[allow(clippy::too_many_arguments)]
async fn admit(
    env: &Env,
    settings: &Settings,
    facts: Facts<'_>,
    credential: Credential<'_>,
    client_ip: &str,
    fault: Fault,
    later: &mut Vec<Later>,
    exit: &mut Vec<(&'static str, String)>,
) -> Result<Admitted, Refusal> {
    // The KV binding only when a step reads (a leased key's hot path never does).
    let kv = || super::kv::namespace(env, KV_BINDING).map_err(|e| unavailable("KV binding", e));
    let (policy, config) = (&settings.policy, &settings.config);
    let (mut gate, hash) = match credential {
        Credential::Key(presented) => {
            let hash = presented.hash();
            (Gate::new(facts, presented.kind(), hash, client_ip, policy, config, settings.flow), hash)
        }
        Credential::Session(s) => {
            (Gate::session(facts, &s, client_ip, policy, config, settings.flow), crate::token::KeyHash([0; 32]))
        }
        Credential::None => return Err(ErrorCode::InternalError.into()),
    };
    let result = loop {
        let next = ISOLATE.with(|i| gate.next(&mut i.borrow_mut(), now_ms()));
        match next {
            Next::ReadKey => match kv() {
                Ok(kv) => gate.key_read(read_json(&kv, &hash.kv_key(), fault).await),
                Err(e) => gate.key_read(Err(e)),
            },
            Next::ReadRecords { org_id, user_id } => match kv() {
                Ok(kv) => gate.records_read(read_records(&kv, &org_id, user_id.as_deref()).await),
                Err(e) => gate.records_read(Err(e)),
            },
            Next::ReadRecordsAndAsk { org_id, user_id, key_id, request } => {
                // The guard's check runs concurrently with the org and user
                // reads: the Durable Object hop hides behind KV.
                let _question = EndQuestion(gate.asking().cloned());
                let kv = kv()?;
                let (records, reply) = futures_util::join!(
                    read_records(&kv, &org_id, user_id.as_deref()),
                    super::guard::ask(env, &key_id, &request, settings.guard_timeout_ms, fault)
                );
                gate.records_read(records);
                gate.guard_replied(logged(reply));
            }
            Next::Ask { key_id, request } => {
                let _question = EndQuestion(gate.asking().cloned());
                let reply = super::guard::ask(env, &key_id, &request, settings.guard_timeout_ms, fault).await;
                gate.guard_replied(logged(reply))
            }
            Next::VerifyTurnstile { token, remote_ip } => {
                gate.turnstile_replied(siteverify(settings, &token, remote_ip.as_deref()).await)
            }
            Next::Wait { slot, until } => wait(slot, until).await,
            Next::Refuse(refusal) => break Err(refusal),
            Next::Admit(admitted) => break Ok(admitted),
        }
    };
    later.extend(gate.take_later());
    if let Some(token) = gate.issued_visitor_token() {
        exit.push((turnstile::ISSUED_HEADER, token.to_owned()));
    }
    result
}

/// How long a siteverify call may take before the request is a 503.
const SITEVERIFY_TIMEOUT_MS: u64 = 5_000;

/// Asks Turnstile's siteverify about a token: its status and body, or why
/// there is none (then the request fails closed).
async fn siteverify(settings: &Settings, token: &str, remote_ip: Option<&str>) -> Result<(u16, String), String> {
    let (secret, url) = settings.turnstile.as_ref().ok_or("no TURNSTILE_SECRET_KEY")?;
    let headers = Headers::new();
    headers.set("content-type", "application/json").map_err(|e| e.to_string())?;
    let body = wasm_bindgen::JsValue::from(turnstile::siteverify_body(secret, token, remote_ip));
    let request = super::new_request(url, "POST", Some(&headers), Some(&body), true).map_err(|e| e.to_string())?;
    let controller = worker::AbortController::default();
    let signal = controller.signal();
    let sending = Box::pin(async move {
        let mut resp = Fetch::Request(request).send_with_signal(&signal).await.map_err(|e| e.to_string())?;
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((resp.status_code(), text))
    });
    let timeout = Box::pin(Delay::from(std::time::Duration::from_millis(SITEVERIFY_TIMEOUT_MS)));
    match select(sending, timeout).await {
        Either::Left((r, _)) => r,
        Either::Right(((), _)) => {
            controller.abort();
            Err("siteverify timed out".into())
        }
    }
}

/// Ends this request's question to the guard when the await that carries it
/// ends — answered (the next step then reads the answer before any other
/// request runs), or dropped with the request — so that a request that went
/// away never leaves the others waiting for an answer that will not come.
struct EndQuestion(Option<SlotId>);

impl Drop for EndQuestion {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            ISOLATE.with(|i| {
                if let Ok(mut i) = i.try_borrow_mut() {
                    i.abandon(&slot);
                }
            });
        }
    }
}

/// Waits until the request asking the guard for `slot` has its answer, or
/// until `until` (then this request asks itself).
///
/// Polled on this request's own timers, never woken by the asking request:
/// a waker called from another request's handler would run this request's
/// future in that request's I/O context, and workerd refuses its I/O there
/// ("Cannot perform I/O on behalf of a different request" — the body stream
/// of this request, when it is then proxied). The checks back off from 1 to
/// 8 ms; a wait lasts one guard round trip.
async fn wait(slot: SlotId, until: i64) {
    let mut step = 1;
    while ISOLATE.with(|i| i.borrow().asking(&slot, now_ms())) && now_ms() < until {
        Delay::from(std::time::Duration::from_millis(step)).await;
        step = (step * 2).min(8);
    }
}

/// After the response: refunds, refusal reports, lease returns (each when
/// due), their answers fed back to the isolate.
fn run_later(ctx: &Context, env: &Env, later: Vec<Later>) {
    for work in later {
        let env = env.clone();
        ctx.wait_until(async move {
            let sleep_until = |at: i64| {
                let ms = u64::try_from(at + 1 - now_ms()).unwrap_or(0);
                Delay::from(std::time::Duration::from_millis(ms))
            };
            let (hash, call) = match work {
                Later::Call { hash, key_id, request } => (hash, Some((key_id, request))),
                Later::ReturnAt { slot, lease_id, at } => {
                    sleep_until(at).await;
                    (slot.hash, ISOLATE.with(|i| i.borrow_mut().due_return(&slot, lease_id, now_ms())))
                }
                Later::FlushAt { hash, at } => {
                    sleep_until(at).await;
                    (hash, ISOLATE.with(|i| i.borrow_mut().due_flush(&hash, now_ms())))
                }
            };
            if let Some((key_id, request)) = call {
                let reply = super::guard::call(&env, &key_id, &request).await;
                if let Err(e) = &reply {
                    worker::console_warn!("keyward: a {} to the key guard failed: {e}", request.kind());
                }
                ISOLATE.with(|i| i.borrow_mut().later_replied(&hash, &request, &reply, now_ms()));
            }
        });
    }
}

/// The org record and, for a user-bound key, the user record, read
/// concurrently.
async fn read_records(
    kv: &KvNamespace,
    org_id: &str,
    user_id: Option<&str>,
) -> Result<(Option<OrgRecord>, Option<UserRecord>), Refusal> {
    let org_key = org_kv_key(org_id);
    let org_fut = read_json::<OrgRecord>(kv, &org_key, Fault::none());
    match user_id {
        None => Ok((org_fut.await?, None)),
        Some(uid) => {
            let user_key = user_kv_key(org_id, uid);
            let (o, u) = futures_util::join!(org_fut, read_json::<UserRecord>(kv, &user_key, Fault::none()));
            Ok((o?, u?))
        }
    }
}

/// A guard call that failed (the request is answered 503) is logged, as
/// the calls after the response are.
fn logged<T>(reply: Result<T, String>) -> Result<T, String> {
    if let Err(e) = &reply {
        worker::console_warn!("keyward: key guard: {e}");
    }
    reply
}

/// Reads and decodes a JSON record. A read error or an undecodable record is
/// a refusal (503), never an allow. A test build's KV fault replaces what
/// the read returned ([`Fault::kv_read`]; the key record's read only).
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    kv: &KvNamespace,
    key: &str,
    fault: Fault,
) -> Result<Option<T>, Refusal> {
    count_io(Io::KvRead);
    let read = kv.text(key).await;
    match fault.kv_read(read).map_err(|e| unavailable("KV read", e))? {
        None => Ok(None),
        Some(t) => crate::from_json(&t).map(Some).map_err(|e| unavailable("KV record decode", e)),
    }
}

// --------------------------------------------------------------- upstream

/// Serves an admitted request: keyward's own control route, or the origin.
async fn upstream(
    incoming: Incoming<'_>,
    env: &Env,
    settings: &Settings,
    admitted: Admitted,
    later: &mut Vec<Later>,
) -> Result<Response, Refusal> {
    let Admitted { grant, key, admission, .. } = admitted;
    let refund = |admission: crate::flow::Admission, refusal: Refusal, later: &mut Vec<Later>| {
        later.extend(ISOLATE.with(|i| admission.refund(&mut i.borrow_mut(), refusal.error.code)));
        refusal
    };
    // keyward's own routes (the control API) are served here, never proxied:
    // a route the policy marks as keyward's but no handler serves is a 404,
    // not a request for the origin.
    match control::route(&grant, &incoming.method, &incoming.path) {
        Some(route) => {
            let caller =
                control::Caller { grant: &grant, key: &key, request_id: incoming.request_id, now: incoming.now };
            let result = control::handle(incoming.req, env, settings, &caller, route, incoming.query).await;
            match result {
                // The org's object did not answer a read: given back.
                Err(refusal)
                    if refusal.error.code == ErrorCode::ServiceUnavailable
                        && !crate::control::failed_call_counts(&incoming.method) =>
                {
                    Err(refund(admission, refusal, later))
                }
                other => {
                    admission.served();
                    other
                }
            }
        }
        None if grant.local => Err(refund(admission, ErrorCode::RouteNotFound.into(), later)),
        None => match build_upstream(&incoming, settings, &grant) {
            // Refused before it reached the origin: given back.
            Err(refusal) => Err(refund(admission, refusal, later)),
            // Once sent, a 502 or 504 counts: the origin may have acted on it.
            Ok(upstream) => {
                admission.served();
                send(upstream, settings, incoming.request_id).await
            }
        },
    }
}

/// The request for the origin: same method, `ORIGIN_URL`'s base path + the
/// canonical path + the raw query, the filtered client headers, the signed
/// identity, and the body streamed through (none for GET and HEAD).
fn build_upstream(
    incoming: &Incoming<'_>,
    settings: &Settings,
    grant: &Grant,
) -> Result<(Request, worker::web_sys::AbortController), Refusal> {
    let key = settings
        .signing_key
        .as_ref()
        .ok_or_else(|| unavailable("configuration", "ORIGIN_SIGNING_SECRET is not set (or shorter than 32 bytes)"))?;
    let method = incoming.method.as_str();
    let bodyless = method == "GET" || method == "HEAD";
    let incoming_headers: Vec<(String, String)> = incoming.req.headers().entries().collect();
    let out = Headers::new();
    let allow = settings.policy.forwarded_headers();
    for (name, value) in forwarded_headers(incoming_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())), allow) {
        if bodyless && name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        out.append(name, value).map_err(|e| unavailable("header copy", e))?;
    }
    // The path the origin receives, which is the path that is signed.
    let forwarded_path = format!("{}{}", settings.origin_base_path, incoming.path.as_str());
    let ts = incoming.now.div_euclid(1000);
    for (name, value) in identity_headers(grant, key, incoming.request_id, method, &forwarded_path, incoming.query, ts)
    {
        out.set(name, &value).map_err(|e| unavailable("header set", e))?;
    }
    if incoming.client_ip != "unknown" {
        out.set("X-Forwarded-For", &incoming.client_ip).map_err(|e| unavailable("header set", e))?;
    }
    let url = incoming.req.inner().url();
    let proto = if url.starts_with("https:") { "https" } else { "http" };
    out.set("X-Forwarded-Proto", proto).map_err(|e| unavailable("header set", e))?;

    let mut target = format!("{}{}", settings.origin, forwarded_path);
    if !incoming.query.is_empty() {
        target.push('?');
        target.push_str(incoming.query);
    }
    // Never served from or stored in a cache: the response belongs to this
    // request's identity, which is not in any cache key. Redirects are not
    // followed. The body is streamed through, never buffered.
    let controller =
        worker::web_sys::AbortController::new().map_err(|e| unavailable("abort controller", format!("{e:?}")))?;
    let body = if bodyless { None } else { incoming.req.inner().body().map(wasm_bindgen::JsValue::from) };
    let content_length = incoming.req.inner().headers().get("content-length").ok().flatten();
    let body = match body {
        Some(b) if needs_upload_guard(true, content_length.as_deref()) => Some(upload_guard(&b, &controller)?),
        other => other,
    };
    let method = Method::from(method.to_owned());
    let request = super::new_request(&target, method.as_ref(), Some(&out), body.as_ref(), true)
        .map_err(|e| unavailable("origin request", e))?;
    Ok((request, controller))
}

/// The client's body of unknown length behind `__keywardUploadGuard`
/// (`worker/entry.mjs`): if the client's stream fails, the origin fetch is
/// aborted before the body ends (see [`needs_upload_guard`]).
fn upload_guard(
    body: &wasm_bindgen::JsValue,
    controller: &worker::web_sys::AbortController,
) -> Result<wasm_bindgen::JsValue, Refusal> {
    use wasm_bindgen::JsCast;
    let global = js_sys::global();
    let guard = js_sys::Reflect::get(&global, &wasm_bindgen::JsValue::from_str("__keywardUploadGuard"))
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .ok_or_else(|| unavailable("upload guard", "worker/entry.mjs did not define __keywardUploadGuard"))?;
    guard.call2(&global, body, controller).map_err(|e| unavailable("upload guard", format!("{e:?}")))
}

/// Sends to the origin (bounded by `ORIGIN_TIMEOUT_MS` to the response
/// headers) and re-wraps the response: same status and headers but those
/// [`dropped_response_header`] (`Access-Control-*`: CORS is decided at the
/// edge; CDN cache instructions), `Cache-Control` made private
/// ([`cache_control`]), the body stream passed through, our request id set.
async fn send(
    (upstream, controller): (Request, worker::web_sys::AbortController),
    settings: &Settings,
    request_id: &str,
) -> Result<Response, Refusal> {
    // A timer of our own, dropped once the headers are in: the platform's
    // `AbortSignal.timeout` would also abort a long streamed body.
    let signal = worker::AbortSignal::from(controller.signal());
    let fetch = Fetch::Request(upstream);
    let sending = Box::pin(fetch.send_with_signal(&signal));
    let timeout = Box::pin(Delay::from(std::time::Duration::from_millis(u64::from(settings.origin_timeout_ms))));
    let resp = match select(sending, timeout).await {
        Either::Left((Ok(resp), _)) => resp,
        Either::Left((Err(e), _)) => {
            worker::console_warn!("keyward: origin fetch failed: {e} ({request_id})");
            return Err(ApiError::new(ErrorCode::OriginUnavailable).into());
        }
        Either::Right(((), _)) => {
            controller.abort();
            worker::console_warn!("keyward: origin timed out ({request_id})");
            return Err(ApiError::new(ErrorCode::OriginTimeout).into());
        }
    };
    let raw: worker::web_sys::Response = resp.into();
    let headers = worker::web_sys::Headers::new_with_headers(&raw.headers())
        .map_err(|e| unavailable("response headers", format!("{e:?}")))?;
    let _ = headers.set("x-request-id", request_id);
    let names: Vec<String> = headers.keys().into_iter().filter_map(|k| k.ok()).filter_map(|k| k.as_string()).collect();
    for name in names.iter().filter(|n| dropped_response_header(n)) {
        let _ = headers.delete(name);
    }
    let cache_control = cache_control(headers.get("cache-control").ok().flatten().as_deref());
    let _ = headers.set("cache-control", &cache_control);
    let init = worker::web_sys::ResponseInit::new();
    init.set_status(raw.status());
    init.set_headers(&headers);
    let out = worker::web_sys::Response::new_with_opt_readable_stream_and_init(raw.body().as_ref(), &init)
        .map_err(|e| unavailable("response", format!("{e:?}")))?;
    Ok(Response::from(out))
}

// ---------------------------------------------------------------- respond

/// What every answer to an admitted request carries: the quota and, for a
/// widget, the CORS headers — the origin's failures included.
fn exit_headers(grant: &Grant, quota: Option<&QuotaWire>) -> Vec<(&'static str, String)> {
    let mut h: Vec<(&'static str, String)> = quota.map(|q| q.headers().to_vec()).unwrap_or_default();
    if let Some(o) = &grant.cors_origin {
        h.extend(cors::response_headers(o));
    }
    h
}

/// The one exit: the answer with the exit headers applied once.
fn respond(result: Result<Response, Refusal>, exit: Vec<(&'static str, String)>, request_id: &str) -> Response {
    match result {
        Ok(mut resp) => {
            let out = resp.headers_mut();
            for (name, value) in exit {
                if name.eq_ignore_ascii_case("vary") {
                    let current = out.get("vary").ok().flatten();
                    let _ = out.set("vary", &cors::append_vary(current.as_deref(), &value));
                } else {
                    let _ = out.set(name, &value);
                }
            }
            resp
        }
        Err(mut refusal) => {
            refusal.headers.extend(exit);
            super::error_response(&refusal, request_id)
        }
    }
}

/// Answers a CORS preflight at the edge (the decision is
/// [`cors::preflight`]); it is never proxied.
fn preflight(
    settings: &Settings,
    path: &CanonicalPath,
    origin: Option<&str>,
    requested: &str,
    request_id: &str,
) -> Result<Response, Refusal> {
    let headers = Headers::new();
    for (name, value) in cors::preflight(&settings.policy, path, origin, requested, &settings.config.session_origins)? {
        let _ = headers.set(name, &value);
    }
    let _ = headers.set("x-request-id", request_id);
    let _ = headers.set("cache-control", "no-store");
    Ok(Response::builder().with_status(204).with_headers(headers).empty())
}
