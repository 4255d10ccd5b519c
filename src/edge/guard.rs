//! `KeyGuard`: one SQLite-backed Durable Object per key id, the single owner
//! of that key's counters, tombstone, leases and pending usage (the
//! decisions are [`crate::guard::GuardState::apply`]).
//!
//! The rows are loaded into memory once and changed synchronously between
//! awaits, so concurrent requests are applied one at a time, exactly. Only
//! the rows a request changed are written (SQL calls are synchronous; the
//! object's output gate holds the reply until they are durable, and resets
//! the object, failing the request, if they are not). A refusal writes
//! nothing. A lease request first makes sure the object holds facts read
//! from the org's object less than `LEASE_MS / 2` ago; while it waits for
//! them other requests may run, and the decision is made afterwards, on the
//! state as it is then (a revocation recorded meanwhile is seen).
//!
//! Usage is rolled up to the org's object by an alarm, at most
//! `USAGE_ROLLUP_SECONDS` after the first uncounted request; the same alarm
//! settles leases whose isolate vanished and forgets expired visitors.

use std::cell::{Cell, RefCell};

use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State};

use crate::admin::{OrgCommand, OrgRequest};
use crate::guard::{Changes, Context, FetchedFacts, GuardReply, GuardRequest, GuardState, GuardStats, RowRef};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (id INTEGER PRIMARY KEY CHECK (id = 1), v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS visitors (id TEXT PRIMARY KEY, seen INTEGER NOT NULL, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
";

/// Round 1 kept the whole state under this key of the key-value API.
const V1_STATE_KEY: &str = "s";

/// The per-key Durable Object.
#[durable_object]
pub struct KeyGuard {
    state: State,
    env: Env,
    mem: RefCell<Option<GuardState>>,
    facts: RefCell<Option<FetchedFacts>>,
    stats: RefCell<GuardStats>,
    alarm_set: Cell<bool>,
}

fn rust_err(e: impl std::fmt::Display) -> worker::Error {
    worker::Error::RustError(e.to_string())
}

impl KeyGuard {
    fn sql(&self) -> SqlStorage {
        self.state.storage().sql()
    }

    /// Loads the rows into memory once (synchronous SQL: nothing interleaves
    /// with it). A guard last written by round 1 is converted to rows.
    async fn load(&self) -> worker::Result<()> {
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        // Rows are read raw (no row type to decode: less code in the wasm).
        let sql = self.sql();
        sql.exec(SCHEMA, None)?;
        let rows =
            |query: &str| -> worker::Result<Vec<Vec<SqlStorageValue>>> { sql.exec(query, None)?.raw().collect() };
        let text = |v: Option<&SqlStorageValue>| match v {
            Some(SqlStorageValue::String(s)) => Ok(s.clone()),
            _ => Err(rust_err("guard row: not text")),
        };
        let int = |v: Option<&SqlStorageValue>| match v {
            Some(SqlStorageValue::Integer(n)) => Ok(*n),
            Some(SqlStorageValue::Float(f)) if f.fract() == 0.0 => Ok(*f as i64),
            _ => Err(rust_err("guard row: not an integer")),
        };
        let one = |table: &str| -> worker::Result<Option<String>> {
            rows(&format!("SELECT v FROM {table} WHERE id = 1"))?.first().map(|r| text(r.first())).transpose()
        };
        let meta = one("meta")?;
        let counters = one("counters")?;
        let visitors = rows("SELECT id, seen, v FROM visitors")?
            .iter()
            .map(|r| Ok((text(r.first())?, int(r.get(1))?, text(r.get(2))?)))
            .collect::<worker::Result<Vec<_>>>()?;
        let leases = rows("SELECT id, v FROM leases")?
            .iter()
            .map(|r| Ok((u64::try_from(int(r.first())?).map_err(rust_err)?, text(r.get(1))?)))
            .collect::<worker::Result<Vec<_>>>()?;
        let mut migrated = None;
        let loaded = if meta.is_none() && counters.is_none() {
            // Await point: the key-value API is asynchronous. Nothing else
            // of this object has run yet (the state is still unloaded).
            // The raw storage call, not `storage().get::<String>`: its
            // serde_wasm_bindgen decoder links serde's display of
            // unexpected values and with it the f64 formatter.
            let raw = wasm_bindgen_futures::JsFuture::from(self.state.storage().as_raw().get(V1_STATE_KEY)?).await?;
            match raw.as_string() {
                None if !raw.is_undefined() => return Err(rust_err("v1 state: invalid type, expected a string")),
                Some(v1) => {
                    let s = GuardState::from_v1(&v1).map_err(rust_err)?;
                    migrated = Some(s.clone());
                    s
                }
                None => GuardState::default(),
            }
        } else {
            GuardState::from_rows(meta.as_deref(), counters.as_deref(), visitors, leases).map_err(rust_err)?
        };
        if self.mem.borrow().is_some() {
            return Ok(());
        }
        let pending = loaded.has_pending();
        *self.mem.borrow_mut() = Some(loaded);
        if let Some(s) = migrated {
            self.write(&s.all_rows())?;
            self.state.storage().delete(V1_STATE_KEY).await?;
        }
        if pending {
            self.schedule_alarm()?;
        }
        Ok(())
    }

    /// Writes exactly the rows `changes` names: upserted if they exist in
    /// memory, deleted if they do not.
    fn write(&self, changes: &Changes) -> worker::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let sql = self.sql();
        let mem = self.mem.borrow();
        let s = mem.as_ref().ok_or_else(|| rust_err("guard state missing"))?;
        let mut rows = 0usize;
        let mut exec = |query: &str, args: Vec<SqlStorageValue>| -> worker::Result<()> {
            let cursor = sql.exec(query, args)?;
            // Drain the cursor so the statement has run to completion.
            for row in cursor.raw() {
                row?;
            }
            rows += cursor.rows_written();
            Ok(())
        };
        let text = |r: RowRef| s.row(&r).ok_or_else(|| rust_err("row encode"));
        if changes.meta {
            exec(
                "INSERT INTO meta (id, v) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
                vec![text(RowRef::Meta)?.into()],
            )?;
        }
        if changes.counters {
            exec(
                "INSERT INTO counters (id, v) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
                vec![text(RowRef::Counters)?.into()],
            )?;
        }
        for id in &changes.visitors {
            match s.visitors.get(id) {
                Some(v) => exec(
                    "INSERT INTO visitors (id, seen, v) VALUES (?, ?, ?)
                     ON CONFLICT(id) DO UPDATE SET seen = excluded.seen, v = excluded.v",
                    vec![id.as_str().into(), v.seen.into(), text(RowRef::Visitor(id.clone()))?.into()],
                )?,
                None => exec("DELETE FROM visitors WHERE id = ?", vec![id.as_str().into()])?,
            }
        }
        for id in &changes.leases {
            // Lease ids are below 2^53: exact as a JavaScript number.
            let key = i64::try_from(*id).map_err(rust_err)?;
            match s.leases.contains_key(id) {
                true => exec(
                    "INSERT INTO leases (id, v) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET v = excluded.v",
                    vec![key.into(), text(RowRef::Lease(*id))?.into()],
                )?,
                false => exec("DELETE FROM leases WHERE id = ?", vec![key.into()])?,
            }
        }
        let mut stats = self.stats.borrow_mut();
        stats.commits += 1;
        stats.rows_written += rows as u64;
        Ok(())
    }

    fn schedule_alarm(&self) -> worker::Result<()> {
        if self.alarm_set.get() {
            return Ok(());
        }
        let every = super::settings(&self.env).map(|s| s.usage_rollup_ms).unwrap_or(30_000);
        let at = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64((super::now_ms() + every) as f64));
        let _alarm = self.state.storage().as_raw().set_alarm(at, js_sys::Object::new())?;
        self.alarm_set.set(true);
        Ok(())
    }

    /// Makes sure fresh facts are held for a lease of `key_id`: asks the
    /// org's object (the system of record) when the last answer is older
    /// than half a lease. The time taken before the call starts the facts'
    /// clock, so a lease never outlives them.
    async fn ensure_facts(&self, org_id: &str, key_id: &str, lease_ms: i64) -> worker::Result<()> {
        // The object's clamped clock (see `GuardState::clock`).
        let raw = super::now_ms();
        let now = self.mem.borrow().as_ref().map_or(raw, |s| s.clock(raw));
        // Facts are a key's: a roll family's keys each have their own.
        let mine = |f: &FetchedFacts| f.facts.key.as_ref().is_some_and(|k| k.id == key_id);
        if self.facts.borrow().as_ref().is_some_and(|f| f.fresh(now, lease_ms) && mine(f)) {
            return Ok(());
        }
        self.stats.borrow_mut().facts_reads += 1;
        let request = OrgRequest {
            command: OrgCommand::LeaseFacts { org_id: org_id.to_owned(), key_id: key_id.to_owned() },
            actor: "guard".into(),
            request_id: "lease".into(),
            now_ms: now,
        };
        let (status, body) =
            super::call_org(&self.env, org_id, &request).await.map_err(|_| rust_err("org object unreachable"))?;
        if status != 200 {
            return Err(rust_err(format!("lease facts: org answered {status}")));
        }
        let facts = crate::from_json::<super::FactsEnvelope>(&body).map_err(rust_err)?.data;
        *self.facts.borrow_mut() = Some(FetchedFacts { facts, at: now });
        Ok(())
    }

    fn stats(&self) -> GuardStats {
        let mem = self.mem.borrow();
        let mut stats = self.stats.borrow().clone();
        if let Some(s) = mem.as_ref() {
            stats.key_id = s.meta.key.as_ref().map(|k| k.key_id.clone());
            let own = s.meta.key.as_ref().and_then(|k| s.meta.member(&k.key_id));
            stats.revoked = s.meta.revoked_at.is_some() || own.is_some_and(|m| m.revoked_at.is_some());
            stats.credits = s.counters.credits.map(|c| c.remaining);
            stats.family = s.meta.members.len();
            stats.visitors = s.visitors.len();
            stats.leases = s.leases.len();
            stats.reserved = s.reserved();
            stats.bytes = s.stored_bytes();
        }
        stats.database_bytes = self.sql().database_size();
        stats
    }
}

impl DurableObject for KeyGuard {
    fn new(state: State, env: Env) -> Self {
        Self {
            state,
            env,
            mem: RefCell::new(None),
            facts: RefCell::new(None),
            stats: RefCell::new(GuardStats::default()),
            alarm_set: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let text = req.text().await?;
        let Ok(request) = GuardRequest::decode(&text) else {
            return Response::error("bad guard request", 400);
        };
        self.stats.borrow_mut().calls.count(&request);
        let settings = super::settings(&self.env).map_err(|_| rust_err("configuration"))?;
        let deadline = req.headers().get(DEADLINE_HEADER).ok().flatten().and_then(|d| d.parse::<i64>().ok());
        // Test builds only (src/edge/faults.rs): throw, or be slow.
        super::faults::Fault::of(&req).in_guard(settings.guard_timeout_ms).await?;
        #[cfg(feature = "bench")]
        if settings.guard_delay_ms > 0 {
            // Benchmark builds only: a guard this far away.
            worker::Delay::from(std::time::Duration::from_millis(u64::from(settings.guard_delay_ms))).await;
        }
        self.load().await?;
        if let GuardRequest::Stats = request {
            return Response::from_json(&self.stats());
        }
        let lease_ms = settings.flow.lease_ms;
        if let GuardRequest::Lease { key, .. } = &request {
            self.ensure_facts(&key.org_id, key.member_id(), lease_ms).await?;
        }
        // A lease id only when a lease may be granted.
        let lease_id = match request {
            GuardRequest::Lease { .. } => u64::from_le_bytes(super::random::<8>().map_err(|_| rust_err("randomness"))?),
            _ => 0,
        };
        let (reply, changes) = {
            let facts = self.facts.borrow();
            let cx = Context {
                now: super::now_ms(),
                lease_ms,
                facts: facts.as_ref(),
                policy: &settings.policy,
                config: &settings.config,
                lease_id,
                deadline,
            };
            let mut mem = self.mem.borrow_mut();
            let s = mem.as_mut().ok_or_else(|| rust_err("guard state missing"))?;
            s.apply(&request, &cx)
        };
        self.write(&changes)?;
        if self.mem.borrow().as_ref().is_some_and(GuardState::has_pending) {
            self.schedule_alarm()?;
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_set.set(false);
        self.load().await?;
        let now = super::now_ms();
        let (batch, changes) = {
            let mut mem = self.mem.borrow_mut();
            mem.as_mut().ok_or_else(|| rust_err("guard state missing"))?.begin_rollup(now)
        };
        // The batch is stored as in flight before it is sent.
        self.write(&changes)?;
        let key = self.mem.borrow().as_ref().and_then(|s| s.meta.key.clone());
        if let (Some((seq, sent)), Some(key)) = (batch, key) {
            let command = OrgCommand::RecordUsage {
                org_id: key.org_id.clone(),
                key_id: key.key_id.clone(),
                seq,
                hours: sent.hours.iter().map(|(h, c)| (*h, c.clone())).collect(),
                last_used_at: sent.last_used_at,
            };
            let request = OrgRequest { command, actor: "guard".into(), request_id: "rollup".into(), now_ms: now };
            match super::call_org(&self.env, &key.org_id, &request).await {
                Ok((200, _)) => {
                    let changes = {
                        let mut mem = self.mem.borrow_mut();
                        mem.as_mut().ok_or_else(|| rust_err("guard state missing"))?.finish_rollup(seq)
                    };
                    self.write(&changes)?;
                }
                Ok((status, body)) => worker::console_warn!("keyward: usage roll-up refused ({status}): {body}"),
                // Re-sent unchanged at the next alarm; the org ignores a repeat.
                Err(_) => {}
            }
        }
        let disposable = self.mem.borrow_mut().as_mut().is_some_and(|s| s.disposable(super::now_ms()));
        if disposable {
            // A per-address guard of public routes whose counts expired:
            // nothing of it is kept (an attacker cycling addresses leaves
            // no rows behind). The next request loads an empty state.
            self.state.storage().delete_all().await?;
            *self.mem.borrow_mut() = None;
            return Response::ok("deleted");
        }
        if self.mem.borrow().as_ref().is_some_and(GuardState::has_pending) {
            self.schedule_alarm()?;
        }
        Response::ok("rolled up")
    }
}

/// The header carrying a request's deadline to the guard (ms since the
/// epoch, the worker's clock): a check or lease question that reaches
/// [`GuardState::apply`] after it counts nothing (the worker has answered
/// 503 by then), so a guard slow to start (queued, loading, reading the
/// facts) does not charge the key for a request that was refused.
const DEADLINE_HEADER: &str = "x-keyward-deadline";

/// Asks the key's object for the request at hand, waiting at most
/// `timeout_ms` (`GUARD_TIMEOUT_MS`); any failure, the deadline passing
/// included, is an error, which the core answers with 503
/// ([`crate::flow::Gate::guard_replied`]).
///
/// What a timed-out question may have done: the guard may have counted the
/// request (it was slow after counting, or its answer was). Nothing is
/// refunded for it: a refund of a request the guard never counted would
/// give back another request's unit, and the key could then get more than
/// its limit through. Over-counting by at most the questions that timed out
/// is the safe direction; a request is never admitted without a count. A
/// question still unanswered when the deadline passes counts nothing once
/// the guard gets to it (see [`DEADLINE_HEADER`]). A lease granted to a
/// question that timed out is never used: the guard settles it as fully
/// used 30 s after it ends.
pub(crate) async fn ask(
    env: &Env,
    key_id: &str,
    request: &GuardRequest,
    timeout_ms: u32,
    fault: super::faults::Fault,
) -> Result<GuardReply, String> {
    let deadline = super::now_ms() + i64::from(timeout_ms);
    let answer = Box::pin(call_with(env, key_id, request, Some(deadline), fault));
    let timer = Box::pin(worker::Delay::from(std::time::Duration::from_millis(u64::from(timeout_ms))));
    match futures_util::future::select(answer, timer).await {
        futures_util::future::Either::Left((reply, _)) => reply,
        futures_util::future::Either::Right(((), _)) => Err(format!("no answer within {timeout_ms} ms")),
    }
}

/// Asks the key's object (work after the response, the admin API's
/// tombstone); any failure is an error (the caller refuses, 503).
pub(crate) async fn call(env: &Env, key_id: &str, request: &GuardRequest) -> Result<GuardReply, String> {
    call_with(env, key_id, request, None, super::faults::Fault::none()).await
}

pub(crate) async fn call_with(
    env: &Env,
    key_id: &str,
    request: &GuardRequest,
    deadline: Option<i64>,
    fault: super::faults::Fault,
) -> Result<GuardReply, String> {
    let headers = worker::Headers::new();
    if let Some(d) = deadline {
        headers.set(DEADLINE_HEADER, &d.to_string()).map_err(|e| e.to_string())?;
    }
    fault.tag_guard(&headers);
    let text = send(env, key_id, request, &headers).await?;
    match GuardReply::decode(&text).map_err(|e| e.to_string())? {
        GuardReply::Invalid { reason } => Err(format!("guard refused the request as invalid: {reason}")),
        reply => Ok(reply),
    }
}

/// Asks the key's object and returns its answer's body (200 only).
pub(crate) async fn call_raw(env: &Env, key_id: &str, request: &GuardRequest) -> Result<String, String> {
    send(env, key_id, request, &worker::Headers::new()).await
}

async fn send(env: &Env, key_id: &str, request: &GuardRequest, headers: &worker::Headers) -> Result<String, String> {
    super::count_io(super::Io::GuardCall);
    let ns = env.durable_object(super::KEYS_BINDING).map_err(|e| e.to_string())?;
    let stub = ns.id_from_name(key_id).and_then(|id| id.get_stub()).map_err(|e| e.to_string())?;
    let body = serde_json::to_string(request).map_err(|e| e.to_string())?;
    let req = super::new_request("https://guard.keyward.internal/", "POST", Some(headers), Some(&body.into()), false)
        .map_err(|e| e.to_string())?;
    let mut resp = stub.fetch_with_request(req).await.map_err(|e| e.to_string())?;
    if resp.status_code() != 200 {
        return Err(format!("guard answered {}", resp.status_code()));
    }
    resp.text().await.map_err(|e| e.to_string())
}
