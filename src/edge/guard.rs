//! `KeyGuard`: one SQLite-backed Durable Object per key id, the single owner
//! of that key's rate-limit counters, revocation tombstone and pending usage
//! (the decisions are [`crate::guard::apply`]).
//!
//! The state is loaded once into memory and changed synchronously between
//! awaits, so concurrent checks are applied one at a time, exactly. The
//! write of the new state is issued without awaiting it: the object's
//! output gate holds the reply until the write is durable (and resets the
//! object, failing the request, if it is not), so the check never answers
//! on a state that could be lost, while back-to-back writes coalesce.
//!
//! Usage is rolled up to the org's object by an alarm, at most
//! `USAGE_ROLLUP_SECONDS` after the first uncounted request: no request waits
//! for it, and `/v1/usage` is at most that stale.

use std::cell::{Cell, RefCell};

use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::admin::{OrgCommand, OrgRequest};
use crate::guard::{self, GuardReply, GuardRequest, GuardState};

const STATE_KEY: &str = "s";

/// The per-key Durable Object.
#[durable_object]
pub struct KeyGuard {
    state: State,
    env: Env,
    cached: RefCell<Option<GuardState>>,
    alarm_set: Cell<bool>,
}

fn rust_err(e: impl std::fmt::Display) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

impl KeyGuard {
    /// Loads the state into memory once. Storage reads close the input gate:
    /// no other event interleaves.
    async fn load(&self) -> worker::Result<()> {
        if self.cached.borrow().is_some() {
            return Ok(());
        }
        let stored: Option<String> = self.state.storage().get(STATE_KEY).await?;
        let loaded: GuardState = match stored {
            Some(s) => serde_json::from_str(&s).map_err(rust_err)?,
            None => GuardState::default(),
        };
        let pending = !loaded.usage.is_empty() || loaded.inflight.is_some();
        let mut cached = self.cached.borrow_mut();
        if cached.is_none() {
            *cached = Some(loaded);
            drop(cached);
            if pending {
                self.schedule_rollup()?;
            }
        }
        Ok(())
    }

    /// Stores a new state: in memory at once, durably before the reply leaves
    /// (output gate; the write is deliberately not awaited).
    fn store(&self, next: GuardState) -> worker::Result<()> {
        let json = serde_json::to_string(&next).map_err(rust_err)?;
        let _write = self.state.storage().as_raw().put(STATE_KEY, json.into())?;
        let pending = !next.usage.is_empty() || next.inflight.is_some();
        *self.cached.borrow_mut() = Some(next);
        if pending && !self.alarm_set.get() {
            self.schedule_rollup()?;
        }
        Ok(())
    }

    fn schedule_rollup(&self) -> worker::Result<()> {
        let every = super::settings(&self.env).map(|s| s.usage_rollup_ms).unwrap_or(30_000);
        let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64((super::now_ms() + every) as f64));
        let _alarm = self.state.storage().as_raw().set_alarm(at, js_sys::Object::new())?;
        self.alarm_set.set(true);
        Ok(())
    }
}

impl DurableObject for KeyGuard {
    fn new(state: State, env: Env) -> Self {
        Self { state, env, cached: RefCell::new(None), alarm_set: Cell::new(false) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let text = req.text().await?;
        let Ok(request) = serde_json::from_str::<GuardRequest>(&text) else {
            return Response::error("bad guard request", 400);
        };
        self.load().await?;
        let now = super::now_ms();
        let (reply, next): (GuardReply, Option<GuardState>) = {
            let cached = self.cached.borrow();
            let current = cached.as_ref().ok_or_else(|| rust_err("guard state missing"))?;
            guard::apply(current, &request, now)
        };
        if let Some(next) = next {
            if super::settings(&self.env).is_ok_and(|s| s.guard_await_writes) {
                // Measurement mode (GUARD_WRITES=await): the same write,
                // awaited before answering, to price the output-gate design.
                let json = serde_json::to_string(&next).map_err(rust_err)?;
                *self.cached.borrow_mut() = Some(next);
                self.state.storage().put(STATE_KEY, json).await?;
                if !self.alarm_set.get() && self.cached.borrow().as_ref().is_some_and(|s| !s.usage.is_empty()) {
                    self.schedule_rollup()?;
                }
            } else {
                self.store(next)?;
            }
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_set.set(false);
        self.load().await?;
        let (batch, next) = {
            let cached = self.cached.borrow();
            let s = cached.as_ref().ok_or_else(|| rust_err("guard state missing"))?;
            guard::begin_rollup(s)
        };
        let key = next.key.clone();
        let Some((seq, sent)) = batch else { return Response::ok("nothing to roll up") };
        // The batch is stored as in flight before it is sent.
        self.store(next)?;
        let Some(key) = key else { return Response::ok("no key") };
        let command = OrgCommand::RecordUsage {
            org_id: key.org_id.clone(),
            key_id: key.key_id.clone(),
            seq,
            hours: sent.hours.iter().map(|(h, c)| (*h, c.clone())).collect(),
            last_used_at: sent.last_used_at,
        };
        let request =
            OrgRequest { command, actor: "guard".into(), request_id: "rollup".into(), now_ms: super::now_ms() };
        match super::call_org(&self.env, &key.org_id, &request).await {
            Ok((200, _)) => {
                let next = {
                    let cached = self.cached.borrow();
                    let s = cached.as_ref().ok_or_else(|| rust_err("guard state missing"))?;
                    guard::finish_rollup(s, seq)
                };
                self.store(next)?;
            }
            Ok((status, body)) => {
                worker::console_warn!("keyward: usage roll-up refused ({status}): {body}");
                self.schedule_rollup()?;
            }
            // Re-sent unchanged at the next alarm; the org ignores a repeat.
            Err(_) => self.schedule_rollup()?,
        }
        Response::ok("rolled up")
    }
}

/// Asks the key's object; any failure is an error (the caller refuses, 503).
pub(crate) async fn call(env: &Env, key_id: &str, request: &GuardRequest) -> Result<GuardReply, String> {
    let ns = env.durable_object(super::KEYS_BINDING).map_err(|e| e.to_string())?;
    let stub = ns.id_from_name(key_id).and_then(|id| id.get_stub()).map_err(|e| e.to_string())?;
    let body = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let mut init = worker::RequestInit::new();
    init.with_method(worker::Method::Post).with_body(Some(body.into()));
    let req = Request::new_with_init("https://guard.keyward.internal/", &init).map_err(|e| e.to_string())?;
    let mut resp = stub.fetch_with_request(req).await.map_err(|e| e.to_string())?;
    if resp.status_code() != 200 {
        return Err(format!("guard answered {}", resp.status_code()));
    }
    let text = resp.text().await.map_err(|e| e.to_string())?;
    match serde_json::from_str(&text).map_err(|e| e.to_string())? {
        GuardReply::Invalid { reason } => Err(format!("guard refused the request as invalid: {reason}")),
        reply => Ok(reply),
    }
}
