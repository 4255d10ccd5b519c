//! `KeyGuard`: one SQLite-backed Durable Object per key id, the single owner
//! of that key's rate-limit counters and revocation tombstone (the decisions
//! are [`crate::guard::apply`]).
//!
//! The state is loaded once into memory and changed synchronously between
//! awaits, so concurrent checks are applied one at a time, exactly. The
//! write of the new state is issued without awaiting it: the object's
//! output gate holds the reply until the write is durable (and resets the
//! object, failing the request, if it is not), so the check never answers
//! on a state that could be lost, while back-to-back writes coalesce.

use std::cell::RefCell;

use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::guard::{self, GuardReply, GuardRequest, GuardState};

const STATE_KEY: &str = "s";

/// The per-key Durable Object.
#[durable_object]
pub struct KeyGuard {
    state: State,
    cached: RefCell<Option<GuardState>>,
}

impl DurableObject for KeyGuard {
    fn new(state: State, _env: Env) -> Self {
        Self { state, cached: RefCell::new(None) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let text = req.text().await?;
        let Ok(request) = serde_json::from_str::<GuardRequest>(&text) else {
            return Response::error("bad guard request", 400);
        };
        if self.cached.borrow().is_none() {
            // Storage reads close the input gate: no other event interleaves.
            let stored: Option<String> = self.state.storage().get(STATE_KEY).await?;
            let loaded = match stored {
                Some(s) => {
                    serde_json::from_str(&s).map_err(|e| worker::Error::RustError(format!("guard state: {e}")))?
                }
                None => GuardState::default(),
            };
            let mut cached = self.cached.borrow_mut();
            if cached.is_none() {
                *cached = Some(loaded);
            }
        }
        let now = super::now_ms();
        let (reply, next): (GuardReply, Option<GuardState>) = {
            let cached = self.cached.borrow();
            let current = cached.as_ref().ok_or_else(|| worker::Error::RustError("guard state missing".into()))?;
            guard::apply(current, &request, now)
        };
        if let Some(next) = next {
            let json = serde_json::to_string(&next).map_err(|e| worker::Error::RustError(e.to_string()))?;
            // Not awaited on purpose: see the module docs (output gate).
            let _write = self.state.storage().as_raw().put(STATE_KEY, json.into())?;
            *self.cached.borrow_mut() = Some(next);
        }
        Response::from_json(&reply)
    }
}

/// Asks the key's object; any failure is `None` (the caller refuses, 503).
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
    serde_json::from_str(&text).map_err(|e| e.to_string())
}
