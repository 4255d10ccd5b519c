//! `OrgStore`: one SQLite-backed Durable Object per org, the system of
//! record for the org, its users, its keys (hash and metadata only) and its
//! audit log. It writes the KV read model after each change.
//!
//! Commands run one at a time (`blockConcurrencyWhile`), so the order of KV
//! writes is the order of SQLite changes: KV never ends on an older state
//! than SQLite. Order of writes per command: SQLite first, then KV; if the KV
//! write fails, a new key is removed again (it must not exist unlisted) and a
//! change is answered 503 so the operator retries (every command is
//! idempotent or safe to repeat).

use serde_json::Value;
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State};

use super::faults::Fault;
use super::kv::KvNamespace;
use crate::admin::{OrgCommand, OrgRequest};
use crate::authorize::Refusal;
use crate::control::{self, Caller};
use crate::error::{success, ApiError, ErrorCode};
use crate::guard::UsageCounts;
use crate::guard::{GuardReply, GuardRequest};
use crate::ids::rfc3339;
use crate::json::{array, obj, text as j, EMPTY};
use crate::ratelimit::RateLimit;
use crate::records::{key_kv_key, org_kv_key, user_kv_key, KeyRecord, OrgRecord, UserRecord};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS org (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, baa_active INTEGER NOT NULL,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
  id TEXT PRIMARY KEY, role TEXT NOT NULL, disabled INTEGER NOT NULL,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, record TEXT NOT NULL,
  created_at INTEGER NOT NULL, revoked_at INTEGER, last_used_at INTEGER);
CREATE TABLE IF NOT EXISTS usage_seq (key_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
  key_id TEXT NOT NULL, hour INTEGER NOT NULL, allowed INTEGER NOT NULL, refused TEXT NOT NULL,
  PRIMARY KEY (key_id, hour));
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
  action TEXT NOT NULL, target TEXT NOT NULL, request_id TEXT NOT NULL, detail TEXT NOT NULL);
";

/// The org Durable Object.
#[durable_object]
pub struct OrgStore {
    state: State,
    env: Env,
}

impl DurableObject for OrgStore {
    fn new(state: State, env: Env) -> Self {
        // The schema is created once per instance; SQL calls are synchronous.
        let sql = state.storage().sql();
        if let Err(e) = sql.exec(SCHEMA, None) {
            worker::console_error!("keyward: org schema: {e}");
        }
        // State created before `last_used_at` existed; fails harmlessly when
        // the column is already there.
        let _ = sql.exec("ALTER TABLE keys ADD COLUMN last_used_at INTEGER", None);
        Self { state, env }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        // Test builds only (src/edge/faults.rs): an org object that is down,
        // or key guards that throw when it tells them of a change.
        let fault = super::faults::Fault::of(&req);
        fault.in_org()?;
        let guards = fault.for_org_guards();
        let request: OrgRequest = match req.text().await.ok().and_then(|t| OrgRequest::decode(&t).ok()) {
            Some(r) => r,
            None => return Ok(reply_err(&ApiError::new(ErrorCode::InternalError).into(), "req_unknown")),
        };
        let storage = self.state.storage();
        let env = self.env.clone();
        let rid = request.request_id.clone();
        let outcome = self
            .state
            .block_concurrency_while(async move { Ok(apply(storage.sql(), env, request, guards).await) })
            .await;
        Ok(match outcome {
            Ok(Ok((status, body))) => super::json_response(status, body, &rid),
            Ok(Err(refusal)) => reply_err(&refusal, &rid),
            Err(e) => reply_err(&super::unavailable("org object", e), &rid),
        })
    }
}

fn reply_err(refusal: &Refusal, request_id: &str) -> Response {
    super::error_response(refusal, request_id)
}

fn sql_err(e: worker::Error) -> Refusal {
    super::unavailable("org sqlite", e)
}

/// A query's rows, read raw: no row type to decode (less code in the wasm).
type Row = Vec<SqlStorageValue>;

fn rows(sql: &SqlStorage, query: &str, args: Option<Vec<SqlStorageValue>>) -> Result<Vec<Row>, Refusal> {
    sql.exec(query, args).and_then(|c| c.raw().collect()).map_err(sql_err)
}

fn text(v: Option<&SqlStorageValue>) -> Result<String, Refusal> {
    match v {
        Some(SqlStorageValue::String(s)) => Ok(s.clone()),
        _ => Err(super::unavailable("org sqlite", "expected text")),
    }
}

fn int(v: Option<&SqlStorageValue>) -> Result<i64, Refusal> {
    match v {
        Some(SqlStorageValue::Integer(n)) => Ok(*n),
        Some(SqlStorageValue::Float(f)) if f.fract() == 0.0 => Ok(*f as i64),
        _ => Err(super::unavailable("org sqlite", "expected an integer")),
    }
}

fn opt_int(v: Option<&SqlStorageValue>) -> Result<Option<i64>, Refusal> {
    match v {
        Some(SqlStorageValue::Null) => Ok(None),
        v => int(v).map(Some),
    }
}

/// Most audit entries kept per org; past it the oldest are deleted (a
/// caller can grow the log with refused writes, within its rate limits).
const MAX_AUDIT_ROWS: i64 = 100_000;

/// Appends an audit entry, then forgets entries beyond [`MAX_AUDIT_ROWS`].
fn write_audit(sql: &SqlStorage, r: &OrgRequest, action: &str, target: &str, detail: &str) -> Result<(), Refusal> {
    sql.exec(
        "INSERT INTO audit (at, actor, action, target, request_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
        vec![
            r.now_ms.into(),
            r.actor.as_str().into(),
            action.into(),
            target.into(),
            r.request_id.as_str().into(),
            detail.into(),
        ],
    )
    .map_err(sql_err)?;
    sql.exec("DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", vec![MAX_AUDIT_ROWS.into()])
        .map(|_| ())
        .map_err(sql_err)
}

/// Runs a command; a write it refuses (4xx) is recorded in the audit log.
async fn apply(sql: SqlStorage, env: Env, r: OrgRequest, guards: Fault) -> Result<(u16, String), Refusal> {
    let result = run(&sql, env, &r, guards).await;
    if let (Err(refusal), Some((action, target))) = (&result, r.command.refused_action()) {
        if (400..500).contains(&refusal.error.code.status()) {
            let (target, detail) = crate::admin::refused_entry(target, &refusal.error);
            if let Err(e) = write_audit(&sql, &r, action, &target, &detail) {
                worker::console_warn!("keyward: recording a refused write failed: {}", e.error);
            }
        }
    }
    result
}

async fn run(sql: &SqlStorage, env: Env, r: &OrgRequest, guards: Fault) -> Result<(u16, String), Refusal> {
    let kv = super::kv::namespace(&env, super::KV_BINDING).map_err(|e| super::unavailable("KV binding", e))?;
    let now = r.now_ms;
    let audit = |action: &str, target: &str, detail: String| write_audit(sql, r, action, target, &detail);
    match &r.command {
        OrgCommand::UpsertOrg { org_id, name, baa_active } => {
            let prev = load_org(sql)?;
            if prev.as_ref().is_some_and(|(o, _)| &o.id != org_id) {
                return Err(super::unavailable("org object", "org id mismatch"));
            }
            sql.exec(
                "INSERT INTO org (id, name, baa_active, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name, baa_active = excluded.baa_active, updated_at = excluded.updated_at",
                vec![org_id.as_str().into(), name.as_str().into(), i64::from(*baa_active).into(), now.into(), now.into()],
            )
            .map_err(sql_err)?;
            match &prev {
                None => audit("org.created", org_id, obj(&[("baa_active", j(baa_active)), ("name", j(name))]))?,
                Some((p, _)) => {
                    if p.baa_active != *baa_active {
                        audit("org.baa_changed", org_id, obj(&[("from", j(&p.baa_active)), ("to", j(baa_active))]))?;
                    }
                    if &p.name != name {
                        audit("org.renamed", org_id, obj(&[("from", j(&p.name)), ("to", j(name))]))?;
                    }
                }
            }
            let created_at = prev.map_or(now, |(_, c)| c);
            let record = OrgRecord { id: org_id.clone(), name: name.clone(), baa_active: *baa_active, updated_at: now };
            put_kv(&kv, &org_kv_key(org_id), &record).await?;
            let data = obj(&[
                ("baa_active", j(&record.baa_active)),
                ("created_at", j(&rfc3339(created_at))),
                ("id", j(&record.id)),
                ("name", j(&record.name)),
                ("updated_at", j(&rfc3339(now))),
            ]);
            Ok((200, success(&data, None)))
        }
        OrgCommand::UpsertUser { org_id, user_id, role, disabled } => {
            require_org(sql, org_id)?;
            let prev = load_user(sql, user_id)?;
            // Omitted `disabled` keeps the current value.
            let disabled = &disabled.unwrap_or(prev.as_ref().is_some_and(|p| p.disabled));
            if prev.as_ref().is_some_and(|p| p.disabled != *disabled) {
                // Disabling ends the user's sessions everywhere at once (the
                // guard, not KV); so does re-enabling, for tokens issued
                // while the user was disabled (say, to whoever then held its
                // password) must not come back to life with it.
                revoke_sessions(&env, org_id, user_id, now).await?;
            }
            sql.exec(
                "INSERT INTO users (id, role, disabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET role = excluded.role, disabled = excluded.disabled, updated_at = excluded.updated_at",
                vec![user_id.as_str().into(), role.as_str().into(), i64::from(*disabled).into(), now.into(), now.into()],
            )
            .map_err(sql_err)?;
            match &prev {
                None => audit("user.created", user_id, obj(&[("disabled", j(disabled)), ("role", j(role))]))?,
                Some(p) => {
                    if &p.role != role {
                        audit("user.role_changed", user_id, obj(&[("from", j(&p.role)), ("to", j(role))]))?;
                    }
                    if p.disabled != *disabled {
                        audit(if *disabled { "user.disabled" } else { "user.enabled" }, user_id, EMPTY.into())?;
                    }
                }
            }
            let record = UserRecord {
                id: user_id.clone(),
                org_id: org_id.clone(),
                role: role.clone(),
                disabled: *disabled,
                updated_at: now,
            };
            put_kv(&kv, &user_kv_key(org_id, user_id), &record).await?;
            let data = obj(&[
                ("disabled", j(&record.disabled)),
                ("id", j(&record.id)),
                ("org_id", j(&record.org_id)),
                ("role", j(&record.role)),
                ("updated_at", j(&rfc3339(now))),
            ]);
            Ok((200, success(&data, None)))
        }
        OrgCommand::CreateKey { record, hash, creator } => {
            require_org(sql, &record.org_id)?;
            if let Some(uid) = creator {
                may_manage_keys(sql, &env, uid)?;
            }
            room_for_key(sql, &env, now, record.parent_id.as_deref(), None)?;
            if let Some(uid) = &record.user_id {
                if load_user(sql, uid)?.is_none() {
                    return Err(ApiError::validation("user_id", "no such user in this org").into());
                }
            }
            let json_record = serde_json::to_string(record).map_err(|e| super::unavailable("key encode", e))?;
            sql.exec(
                "INSERT INTO keys (id, hash, record, created_at, revoked_at) VALUES (?, ?, ?, ?, NULL)",
                vec![
                    record.id.as_str().into(),
                    hash.as_str().into(),
                    json_record.as_str().into(),
                    record.created_at.into(),
                ],
            )
            .map_err(sql_err)?;
            if let Err(e) = put_kv(&kv, &key_kv_key(hash), record).await {
                // Never leave a key that works but is not in the system of record, or vice versa.
                let _ = sql.exec("DELETE FROM keys WHERE id = ?", vec![record.id.as_str().into()]);
                return Err(e);
            }
            audit("key.created", &record.id, key_fields(record, false, None))?;
            Ok((201, success(&key_view(record), None)))
        }
        OrgCommand::RevokeKey { org_id, key_id, caller, leaked_at_url } => {
            require_org(sql, org_id)?;
            let found = rows(sql, "SELECT hash, record FROM keys WHERE id = ?", Some(vec![key_id.as_str().into()]))?;
            let Some(row) = found.first() else {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            };
            let hash = text(row.first())?;
            let record: KeyRecord =
                crate::from_json(&text(row.get(1))?).map_err(|e| super::unavailable("key decode", e))?;
            if let Some(c) = caller {
                caller_rules(sql, &env, c, &|policy, who| control::check_revoke(policy, who, &record))?;
            }
            // The key and every key it minted, and theirs: minted keys do
            // not outlive the key that made them.
            let mut victims: Vec<(String, String, KeyRecord)> = Vec::new();
            let mut times: Vec<i64> = Vec::new();
            let mut found = vec![(key_id.clone(), hash, record.clone())];
            // Rounds: a key this revoke has not written yet may mint while
            // the tombstones are awaited; once the system of record says a
            // key is revoked it mints no more (CreateKey checks its parent),
            // so a round that finds no new descendant is the last.
            for _ in 0..MAX_CASCADE_ROUNDS {
                let mut frontier: Vec<String> = found.iter().map(|(id, _, _)| id.clone()).collect();
                frontier.extend(victims.iter().map(|(id, _, _)| id.clone()));
                while let Some(parent) = frontier.pop() {
                    for r in rows(sql, DESCENDANTS, Some(vec![parent.as_str().into()]))? {
                        let (id, h) = (text(r.first())?, text(r.get(1))?);
                        if victims.iter().chain(&found).any(|(v, _, _)| *v == id) {
                            continue;
                        }
                        let rec: KeyRecord =
                            crate::from_json(&text(r.get(2))?).map_err(|e| super::unavailable("key decode", e))?;
                        frontier.push(id.clone());
                        found.push((id, h, rec));
                    }
                }
                if found.is_empty() {
                    break;
                }
                // The tombstones first, each in its key's guard: from its
                // answer on, every check of that key is refused, whatever KV
                // still says. A guard keeps the first revocation time, which
                // the system of record adopts. Should one fail, nothing of
                // this round is written and the revoke is answered 503: a
                // retry (the tombstones are idempotent) finishes it.
                let mut at = Vec::with_capacity(found.len());
                for (id, _, rec) in &found {
                    // The key's own tombstone in its guard (its roll
                    // family's: the family's other keys live on).
                    let tombstone =
                        GuardRequest::Revoke { revoked_at: rec.revoked_at.unwrap_or(now), key_id: Some(id.clone()) };
                    match super::guard::call(&env, rec.guard(), &tombstone).await {
                        Ok(GuardReply::RevokeRecorded { revoked_at }) => at.push(revoked_at),
                        Ok(_) => return Err(super::unavailable("key guard", "unexpected reply to a revoke")),
                        Err(e) => return Err(super::unavailable("key guard", e)),
                    }
                }
                // Then the system of record, in one go (no await in between).
                for ((id, _, rec), t) in found.iter_mut().zip(&at) {
                    let first = rec.revoked_at.is_none();
                    rec.revoked_at = Some(*t);
                    if first && id == key_id && leaked_at_url.is_some() {
                        rec.leaked_at = Some(*t);
                    }
                    if first {
                        let json_record =
                            serde_json::to_string(&*rec).map_err(|e| super::unavailable("key encode", e))?;
                        sql.exec(
                            "UPDATE keys SET record = ?, revoked_at = ? WHERE id = ?",
                            vec![json_record.as_str().into(), (*t).into(), id.as_str().into()],
                        )
                        .map_err(sql_err)?;
                        let (action, detail) = match leaked_at_url {
                            _ if id != key_id => ("key.revoked", obj(&[("cascade_from", j(key_id))])),
                            Some(url) => ("key.leaked", obj(&[("url", j(url))])),
                            None => ("key.revoked", EMPTY.into()),
                        };
                        audit(action, id, detail)?;
                    }
                }
                victims.append(&mut found);
                times.extend(at);
            }
            // Written again on a repeated revoke too, so a retry after a
            // failed KV write repairs the read model.
            for (_, h, rec) in &victims {
                put_kv(&kv, &key_kv_key(h), rec).await?;
            }
            let data = obj(&[
                ("descendants_revoked", j(&(victims.len() - 1))),
                ("id", j(key_id)),
                ("revoked_at", j(&rfc3339(times[0]))),
            ]);
            Ok((200, success(&data, None)))
        }
        OrgCommand::UpdateKey { org_id, key_id, body, caller } => {
            require_org(sql, org_id)?;
            let (hash, old) = live_key(sql, key_id, now)?;
            let policy = &super::settings(&env)?.policy;
            let patch = crate::admin::parse_patch(body.as_bytes(), policy, now)?;
            let mut new = crate::admin::apply_patch(&old, &patch, policy)?;
            let family_keys = family(sql, old.guard())?;
            if let Some(c) = new.credits.as_mut().filter(|_| patch.credits.is_some()) {
                // Ordered by this object, not by the edge's clocks.
                let latest = family_keys.iter().filter_map(|(_, k)| k.credits.map(|c| c.set_at)).max();
                c.set_at = crate::admin::credits_stamp(now, latest);
            }
            if let Some(c) = caller {
                caller_rules(sql, &env, c, &|policy, who| control::check_update(policy, who, &old, &new))?;
            }
            // Credits are the roll family's (one count in one guard): every
            // live key of the family takes the new setting.
            let mut changed = vec![(hash, new)];
            if patch.credits.is_some() {
                for (h, mut k) in family_keys {
                    // Live keys only (an ended key's guard entry keeps no record).
                    if k.id != *key_id && k.expires_at.is_none_or(|e| e > now) {
                        k.credits = changed[0].1.credits;
                        k.version += 1;
                        changed.push((h, k));
                    }
                }
            }
            // The system of record first, then each key's guard (from its
            // answer on, a request decided on the old version is decided
            // again on the new one, wherever KV still serves the old), then
            // KV. A guard that does not answer: 503, and a retry applies
            // the (saved) change everywhere at once.
            for (_, k) in &changed {
                let json_record = serde_json::to_string(k).map_err(|e| super::unavailable("key encode", e))?;
                sql.exec(
                    "UPDATE keys SET record = ? WHERE id = ?",
                    vec![json_record.as_str().into(), k.id.as_str().into()],
                )
                .map_err(sql_err)?;
            }
            let fields: Vec<String> = patch.fields().iter().map(j).collect();
            audit("key.updated", key_id, obj(&[("fields", array(&fields))]))?;
            let mut told = Ok(());
            for (_, k) in &changed {
                if let Err(e) = tell_guard(&env, k, guards).await {
                    told = Err(e);
                }
            }
            // KV whatever the guards said: an unconfirmed change then still
            // reaches every isolate within KV's propagation time.
            for (h, k) in &changed {
                put_kv(&kv, &key_kv_key(h), k).await?;
            }
            told?;
            Ok((200, success(&key_view(&changed[0].1), None)))
        }
        OrgCommand::RollKey { org_id, key_id, grace_ms, caller } => {
            require_org(sql, org_id)?;
            let (old_hash, old) = live_key(sql, key_id, now)?;
            if let Some(next) = &old.rolled_to {
                let message = format!("This key was already rolled (to {next}): roll its successor instead.");
                return Err(ApiError::with_message(ErrorCode::KeyLimitReached, message).into());
            }
            if let Some(c) = caller {
                caller_rules(sql, &env, c, &|policy, who| control::check_roll(policy, who, &old))?;
            }
            let parent = control::rolled_parent(caller.as_ref().and_then(|c| c.key_id.as_deref()), &old);
            // With no grace the old key ends as the new one starts: the
            // roll adds no live key to the org, its parent or its family.
            let replaced = (*grace_ms == 0).then_some(&old);
            room_for_key(sql, &env, now, parent.as_deref(), replaced)?;
            let settings = super::settings(&env)?;
            let family_id = old.guard().to_owned();
            let members = rows(sql, FAMILY_ALL, Some(vec![family_id.as_str().into()]))?;
            let live_members =
                family(sql, &family_id)?.iter().filter(|(_, k)| k.expires_at.is_none_or(|e| e > now)).count();
            if members.len() >= crate::guard::MAX_MEMBERS
                || live_members.saturating_sub(usize::from(replaced.is_some())) >= crate::guard::MAX_LIVE_MEMBERS
            {
                let message = format!(
                    "This key was rolled {} times and has {live_members} live versions (at most {} rolls, {} live): create a new key instead.",
                    members.len() - 1,
                    crate::guard::MAX_MEMBERS - 1,
                    crate::guard::MAX_LIVE_MEMBERS
                );
                return Err(ApiError::with_message(ErrorCode::KeyLimitReached, message).into());
            }
            let token = crate::token::generate(
                &settings.config.format,
                old.kind,
                &super::random::<{ crate::token::RANDOM_BYTES }>()?,
            );
            let new = KeyRecord {
                id: crate::ids::ulid(now, &super::random::<10>()?),
                prefix: token.prefix.clone(),
                last_four: token.last_four.clone(),
                created_at: now,
                revoked_at: None,
                leaked_at: None,
                guard_id: Some(family_id),
                version: 0,
                parent_id: parent,
                ..old.clone()
            };
            let ends = old.expires_at.map_or(now + grace_ms, |e| e.min(now + grace_ms));
            let ended = KeyRecord {
                expires_at: Some(ends),
                version: old.version + 1,
                rolled_to: Some(new.id.clone()),
                ..old.clone()
            };
            // The new key first, durable in the system of record and KV
            // (undone if KV fails): no step after it can leave the org
            // without a working key.
            let new_json = serde_json::to_string(&new).map_err(|e| super::unavailable("key encode", e))?;
            let new_hash = token.hash.to_hex();
            sql.exec(
                "INSERT INTO keys (id, hash, record, created_at, revoked_at) VALUES (?, ?, ?, ?, NULL)",
                vec![new.id.as_str().into(), new_hash.as_str().into(), new_json.as_str().into(), now.into()],
            )
            .map_err(sql_err)?;
            let undo = || {
                let _ = sql.exec("DELETE FROM keys WHERE id = ?", vec![new.id.as_str().into()]);
            };
            if let Err(e) = put_kv(&kv, &key_kv_key(&new_hash), &new).await {
                undo();
                return Err(e);
            }
            // Then the old key's end in its guard (from its answer on, the
            // old key is refused after `ends` everywhere). Should it fail,
            // the new key is withdrawn (its plaintext was never given: a KV
            // entry left behind matches no token anyone holds). Whether the
            // guard took the end is then unknown (its answer may be what
            // was lost), and an end it took is final: the answer says so,
            // and a retry of the roll completes it either way.
            if tell_guard(&env, &ended, guards).await.is_err() {
                undo();
                let _ = kv.delete(&key_kv_key(&new_hash)).await;
                let message = "The key's guard did not confirm the old key's end: no new key was made. Retry the roll: if the guard took the end before its answer was lost, the old key still ends as asked, and only a retry gives it its successor.";
                return Err(ApiError::with_message(ErrorCode::ServiceUnavailable, message).into());
            }
            let old_json = serde_json::to_string(&ended).map_err(|e| super::unavailable("key encode", e))?;
            sql.exec("UPDATE keys SET record = ? WHERE id = ?", vec![old_json.as_str().into(), key_id.as_str().into()])
                .map_err(sql_err)?;
            // The guard enforces the end whatever KV says; KV follows.
            if let Err(e) = put_kv(&kv, &key_kv_key(&old_hash), &ended).await {
                worker::console_warn!("keyward: KV kept the rolled key {key_id} without its end: {}", e.error);
            }
            let detail = obj(&[
                ("grace_seconds", j(&(grace_ms / 1000))),
                ("new_key_id", j(&new.id)),
                ("old_key_expires_at", j(&rfc3339(ends))),
            ]);
            audit("key.rolled", key_id, detail)?;
            audit("key.created", &new.id, key_fields(&new, false, None))?;
            let view = key_view(&new);
            let data = format!(
                "{},\"old_key_expires_at\":{},\"rolled_from\":{}}}",
                &view[..view.len() - 1],
                j(&rfc3339(ends)),
                j(key_id)
            );
            Ok((201, super::with_plaintext(&success(&data, None), token.plaintext)?))
        }
        OrgCommand::RevokeSessions { org_id, user_id, caller } => {
            require_org(sql, org_id)?;
            let Some(target) = load_user(sql, user_id)? else {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            };
            if let Some(c) = caller.as_ref().filter(|c| c.user_id.as_ref() != Some(user_id)) {
                if let Some(uid) = &c.user_id {
                    may_manage_keys(sql, &env, uid)?;
                }
                let policy = &super::settings(&env)?.policy;
                control::check_revoke_sessions(policy, &c.scopes, &target.role)?;
            }
            let at = revoke_sessions(&env, org_id, user_id, now).await?;
            audit("user.sessions_revoked", user_id, EMPTY.into())?;
            let data = obj(&[("sessions_revoked_at", j(&rfc3339(at))), ("user_id", j(user_id))]);
            Ok((200, success(&data, None)))
        }
        OrgCommand::ListKeys { org_id, cursor, limit } => list_keys(sql, org_id, cursor.as_deref(), *limit),
        OrgCommand::ListAudit { org_id, cursor, limit } => list_audit(sql, org_id, cursor.as_deref(), *limit),
        OrgCommand::Usage { org_id, from, to } => {
            let rollup = super::settings(&env).map(|s| s.usage_rollup_ms).unwrap_or(30_000);
            usage(sql, org_id, *from, *to, rollup)
        }
        OrgCommand::LeaseFacts { org_id, key_id } => lease_facts(sql, org_id, key_id),
        OrgCommand::AuditRefused { org_id, action, target, detail } => {
            require_org(sql, org_id)?;
            write_audit(sql, r, action, target, detail)?;
            Ok((200, success(EMPTY, None)))
        }
        OrgCommand::RecordUsage { org_id, key_id, seq, hours, last_used_at } => {
            require_org(sql, org_id)?;
            record_usage(sql, key_id, *seq, hours, *last_used_at)
        }
    }
}

fn list_keys(sql: &SqlStorage, org_id: &str, cursor: Option<&str>, limit: u32) -> Result<(u16, String), Refusal> {
    require_org(sql, org_id)?;
    // One more than asked, to know whether there is a next page. ULIDs sort
    // by creation time, so `id < cursor` walks newest to oldest with no
    // duplicates or gaps.
    let rows = rows(
        sql,
        "SELECT record, last_used_at FROM keys WHERE revoked_at IS NULL AND (?1 IS NULL OR id < ?1)
             ORDER BY id DESC LIMIT ?2",
        Some(vec![SqlStorageValue::from(cursor.map(str::to_owned)), (i64::from(limit) + 1).into()]),
    )?;
    let has_more = rows.len() > limit as usize;
    let mut data = Vec::with_capacity(rows.len());
    let mut last_id = None;
    for row in rows.iter().take(limit as usize) {
        let k: KeyRecord = crate::from_json(&text(row.first())?).map_err(|e| super::unavailable("key decode", e))?;
        data.push(key_fields(&k, true, Some(opt_int(row.get(1))?.map(rfc3339))));
        last_id = Some(k.id);
    }
    let next_cursor = if has_more { last_id } else { None };
    let meta = obj(&[("has_more", j(&has_more)), ("next_cursor", j(&next_cursor))]);
    Ok((200, success(&array(&data), Some(&meta))))
}

fn list_audit(sql: &SqlStorage, org_id: &str, cursor: Option<&str>, limit: u32) -> Result<(u16, String), Refusal> {
    require_org(sql, org_id)?;
    struct Row {
        seq: i64,
        at: i64,
        actor: String,
        action: String,
        target: String,
        request_id: String,
        detail: String,
    }
    let cursor: Option<i64> = cursor.and_then(|c| c.parse().ok());
    let rows = rows(
        sql,
        "SELECT seq, at, actor, action, target, request_id, detail FROM audit
             WHERE (?1 IS NULL OR seq < ?1) ORDER BY seq DESC LIMIT ?2",
        Some(vec![SqlStorageValue::from(cursor), (i64::from(limit) + 1).into()]),
    )?
    .iter()
    .map(|r| {
        Ok(Row {
            seq: int(r.first())?,
            at: int(r.get(1))?,
            actor: text(r.get(2))?,
            action: text(r.get(3))?,
            target: text(r.get(4))?,
            request_id: text(r.get(5))?,
            detail: text(r.get(6))?,
        })
    })
    .collect::<Result<Vec<Row>, Refusal>>()?;
    let has_more = rows.len() > limit as usize;
    let entries: Vec<String> = rows
        .iter()
        .take(limit as usize)
        .map(|r| {
            obj(&[
                ("action", j(&r.action)),
                ("actor", j(&r.actor)),
                ("created_at", j(&rfc3339(r.at))),
                ("detail", j(&serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null))),
                ("id", j(&r.seq.to_string())),
                ("request_id", j(&r.request_id)),
                ("target", j(&r.target)),
            ])
        })
        .collect();
    let next_cursor = if has_more { rows.get(limit as usize - 1).map(|r| r.seq.to_string()) } else { None };
    let meta = obj(&[("has_more", j(&has_more)), ("next_cursor", j(&next_cursor))]);
    Ok((200, success(&array(&entries), Some(&meta))))
}

/// Most rows one `/v1/usage` answer carries (`meta.truncated` says when
/// there were more: narrow `from`/`to`).
const USAGE_ROWS: i64 = 10_000;

fn usage(sql: &SqlStorage, org_id: &str, from: i64, to: i64, rollup_ms: i64) -> Result<(u16, String), Refusal> {
    require_org(sql, org_id)?;
    struct Row {
        key_id: String,
        hour: i64,
        allowed: i64,
        refused: String,
    }
    // Hours that overlap [from, to).
    let first_hour = from - from.rem_euclid(crate::guard::HOUR_MS);
    let rows = rows(
        sql,
        "SELECT key_id, hour, allowed, refused FROM usage WHERE hour >= ? AND hour < ? ORDER BY hour, key_id LIMIT ?",
        Some(vec![first_hour.into(), to.into(), (USAGE_ROWS + 1).into()]),
    )?
    .iter()
    .map(|r| {
        Ok(Row { key_id: text(r.first())?, hour: int(r.get(1))?, allowed: int(r.get(2))?, refused: text(r.get(3))? })
    })
    .collect::<Result<Vec<Row>, Refusal>>()?;
    let truncated = rows.len() > USAGE_ROWS as usize;
    let data: Vec<String> = rows
        .iter()
        .take(USAGE_ROWS as usize)
        .map(|r| {
            let refused: Value = serde_json::from_str(&r.refused).unwrap_or_else(|_| Value::Object(Default::default()));
            let total_refused: i64 = refused.as_object().map_or(0, |m| m.values().filter_map(Value::as_i64).sum());
            obj(&[
                ("allowed", j(&r.allowed)),
                ("hour", j(&rfc3339(r.hour))),
                ("key_id", j(&r.key_id)),
                ("refused", j(&total_refused)),
                ("refused_by_reason", j(&refused)),
            ])
        })
        .collect();
    let meta = obj(&[
        ("from", j(&rfc3339(from))),
        ("rollup_interval_seconds", j(&(rollup_ms / 1000))),
        ("to", j(&rfc3339(to))),
        ("truncated", j(&truncated)),
    ]);
    Ok((200, success(&array(&data), Some(&meta))))
}

fn record_usage(
    sql: &SqlStorage,
    key_id: &str,
    seq: u64,
    hours: &[(i64, UsageCounts)],
    last_used_at: Option<i64>,
) -> Result<(u16, String), Refusal> {
    // A roll-up is applied once: the guard re-sends one whose reply it lost.
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let applied = match rows(sql, "SELECT seq FROM usage_seq WHERE key_id = ?", Some(vec![key_id.into()]))?.first() {
        Some(r) => Some(int(r.first())?),
        None => None,
    };
    if applied.is_some_and(|a| a >= seq) {
        return Ok((200, success(r#"{"duplicate":true,"recorded":0}"#, None)));
    }
    sql.exec(
        "INSERT INTO usage_seq (key_id, seq) VALUES (?, ?) ON CONFLICT(key_id) DO UPDATE SET seq = excluded.seq",
        vec![key_id.into(), seq.into()],
    )
    .map_err(sql_err)?;
    for (hour, counts) in hours {
        let existing = rows(
            sql,
            "SELECT allowed, refused FROM usage WHERE key_id = ? AND hour = ?",
            Some(vec![key_id.into(), (*hour).into()]),
        )?;
        let mut total = UsageCounts::default();
        if let Some(row) = existing.first() {
            let (allowed, refused) = (int(row.first())?, text(row.get(1))?);
            total.allowed = u64::try_from(allowed).unwrap_or(0);
            total.refused = crate::from_json(&refused).unwrap_or_default();
        }
        total.add(counts);
        // Refunds net out against admissions, whichever roll-up carried them.
        total.allowed = total.allowed.saturating_sub(total.refunded);
        total.refunded = 0;
        let refused = serde_json::to_string(&total.refused).map_err(|e| super::unavailable("usage encode", e))?;
        sql.exec(
            "INSERT INTO usage (key_id, hour, allowed, refused) VALUES (?, ?, ?, ?)
             ON CONFLICT(key_id, hour) DO UPDATE SET allowed = excluded.allowed, refused = excluded.refused",
            vec![
                key_id.into(),
                (*hour).into(),
                i64::try_from(total.allowed).unwrap_or(i64::MAX).into(),
                refused.as_str().into(),
            ],
        )
        .map_err(sql_err)?;
    }
    if let Some(t) = last_used_at {
        sql.exec(
            "UPDATE keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            vec![t.into(), key_id.into(), t.into()],
        )
        .map_err(sql_err)?;
    }
    Ok((200, success(&obj(&[("recorded", j(&hours.len()))]), None)))
}

/// The public view of a key: never the hash or the plaintext.
pub(crate) fn key_view(k: &KeyRecord) -> String {
    key_fields(k, true, None)
}

/// A key's fields as a JSON object: the view's (`view`: with its id,
/// prefix, last four, creation and revocation times, and `last_used_at`
/// when given) or the creation audit entry's.
fn key_fields(k: &KeyRecord, view: bool, last_used_at: Option<Option<String>>) -> String {
    let mut m: Vec<(&str, String)> = Vec::with_capacity(20);
    m.push(("allowed_ips", j(&k.allowed_ips)));
    m.push(("allowed_origins", j(&k.allowed_origins)));
    m.push(("consistency", j(&k.consistency)));
    // The setting; the live count is in each response's X-Credits-Remaining
    // and the admin API's guard view.
    let credits = k.credits.map(|c| {
        let refill = c.refill.map(|r| obj(&[("amount", j(&r.amount)), ("interval", j(&r.interval.as_str()))]));
        obj(&[
            ("refill", refill.unwrap_or_else(|| "null".into())),
            ("remaining", j(&c.remaining)),
            ("set_at", j(&rfc3339(c.set_at))),
        ])
    });
    m.push(("credits", credits.unwrap_or_else(|| "null".into())));
    if view {
        m.push(("created_at", j(&rfc3339(k.created_at))));
    }
    m.push(("expires_at", j(&k.expires_at.map(rfc3339))));
    if view {
        m.push(("id", j(&k.id)));
    }
    m.push(("kind", j(&k.kind)));
    if view {
        m.push(("last_four", j(&k.last_four)));
    }
    if let Some(t) = last_used_at {
        m.push(("last_used_at", j(&t)));
    }
    // Stored as a JSON object's compact text, written by serde_json (keys
    // sorted): as it would be written again.
    m.push(("meta", k.meta.clone().unwrap_or_else(|| "null".into())));
    m.push(("name", j(&k.name)));
    if view {
        m.push(("prefix", j(&k.prefix)));
    }
    m.push(("rate_limits", limits(&k.rate_limits)));
    m.push(("resource_id", j(&k.resource_id)));
    if view {
        m.push(("revoked_at", j(&k.revoked_at.map(rfc3339))));
    }
    m.push(("scopes", j(&k.scopes)));
    m.push(("turnstile_required", j(&k.turnstile_required)));
    m.push(("user_id", j(&k.user_id)));
    m.push(("visitor_rate_limits", limits(&k.visitor_rate_limits)));
    obj(&m)
}

/// Rate limits as serde_json's `Value` writes them (keys sorted).
fn limits(ls: &[RateLimit]) -> String {
    let items: Vec<String> = ls
        .iter()
        .map(|l| obj(&[("limit", j(&l.limit)), ("name", j(&l.name)), ("window_seconds", j(&l.window_seconds))]))
        .collect();
    array(&items)
}

/// What a leased key's guard grants leases on, from this object's SQLite
/// (never from KV): the key record, the org, and the key's user. A missing
/// one is `null`; the decision refuses on it.
fn lease_facts(sql: &SqlStorage, org_id: &str, key_id: &str) -> Result<(u16, String), Refusal> {
    // Rows read raw: no row type to decode (less code in the wasm).
    let first = |query: &str, arg: &str| -> Result<Option<Vec<SqlStorageValue>>, Refusal> {
        sql.exec(query, vec![arg.into()]).map_err(sql_err)?.raw().next().transpose().map_err(sql_err)
    };
    let org = load_org(sql)?.map(|(o, _)| o).filter(|o| o.id == org_id);
    let key: Option<KeyRecord> = match first("SELECT record FROM keys WHERE id = ?", key_id)? {
        Some(row) => Some(crate::from_json(&text(row.first())?).map_err(|e| super::unavailable("key decode", e))?),
        None => None,
    };
    let user = match key.as_ref().and_then(|k| k.user_id.as_deref()) {
        None => None,
        Some(uid) => match first("SELECT role, disabled, updated_at FROM users WHERE id = ?", uid)? {
            None => None,
            Some(row) => Some(UserRecord {
                id: uid.to_owned(),
                org_id: org_id.to_owned(),
                role: text(row.first())?,
                disabled: int(row.get(1))? != 0,
                updated_at: int(row.get(2))?,
            }),
        },
    };
    let facts = crate::guard::Facts { key, org, user };
    let data = serde_json::to_string(&facts).map_err(|e| super::unavailable("facts encode", e))?;
    Ok((200, crate::error::success_raw(&data)))
}

async fn put_kv<T: serde::Serialize>(kv: &KvNamespace, key: &str, value: &T) -> Result<(), Refusal> {
    let text = serde_json::to_string(value).map_err(|e| super::unavailable("KV encode", e))?;
    kv.put_text(key, &text).await.map_err(|e| super::unavailable("KV put", e))
}

fn load_org(sql: &SqlStorage) -> Result<Option<(OrgRecord, i64)>, Refusal> {
    let Some(r) = rows(sql, "SELECT id, name, baa_active, created_at, updated_at FROM org LIMIT 1", None)?.pop() else {
        return Ok(None);
    };
    let org = OrgRecord {
        id: text(r.first())?,
        name: text(r.get(1))?,
        baa_active: int(r.get(2))? != 0,
        updated_at: int(r.get(4))?,
    };
    Ok(Some((org, int(r.get(3))?)))
}

fn require_org(sql: &SqlStorage, org_id: &str) -> Result<(), Refusal> {
    match load_org(sql)? {
        Some((o, _)) if o.id == org_id => Ok(()),
        _ => Err(ApiError::with_message(ErrorCode::ResourceNotFound, "The org does not exist.").into()),
    }
}

struct UserRow {
    role: String,
    disabled: bool,
}

/// A user-bound key may create or revoke keys only while its user, per this
/// org's own records (KV may lag), is enabled and has a key-creating role.
fn may_manage_keys(sql: &SqlStorage, env: &Env, user_id: &str) -> Result<(), Refusal> {
    let policy = &super::settings(env)?.policy;
    match load_user(sql, user_id)? {
        Some(u) if !u.disabled && policy.role_creates_keys(&u.role) => Ok(()),
        _ => Err(ApiError::with_message(
            ErrorCode::PermissionDenied,
            "This key's user may not manage API keys (role or state).",
        )
        .into()),
    }
}

/// Records a session revocation in the user's sessions guard: tokens
/// issued until `now` are refused from its answer on. Its time.
async fn revoke_sessions(env: &Env, org_id: &str, user_id: &str, now: i64) -> Result<i64, Refusal> {
    let id = crate::jwt::session_guard_id(org_id, user_id);
    match super::guard::call(env, &id, &GuardRequest::RevokeSessions { revoked_at: now }).await {
        Ok(GuardReply::RevokeRecorded { revoked_at }) => Ok(revoked_at),
        Ok(_) => Err(super::unavailable("sessions guard", "unexpected reply to a session revocation")),
        Err(e) => Err(super::unavailable("sessions guard", e)),
    }
}

/// The control API's caller of a revoke, roll or update, as `check` sees
/// it: as it would mint — its own record's expiry, limits, mode, addresses,
/// metadata and credits, read here (a JWT session: its role's limits, no
/// expiry) — and, when bound to a user, only while that user may manage
/// keys.
fn caller_rules(
    sql: &SqlStorage,
    env: &Env,
    c: &crate::admin::RevokeCaller,
    check: &dyn Fn(&crate::policy::Policy, &Caller<'_>) -> Result<(), ApiError>,
) -> Result<(), Refusal> {
    if let Some(uid) = &c.user_id {
        may_manage_keys(sql, env, uid)?;
    }
    let settings = super::settings(env)?;
    let mine: Option<KeyRecord> = match &c.key_id {
        Some(id) => match load_key(sql, id)? {
            Some((_, k)) if k.rolled_to.is_some() => return Err(rolled_caller().into()),
            Some((_, k)) => Some(k),
            None => return Err(ApiError::new(ErrorCode::PermissionDenied).into()),
        },
        None => None,
    };
    let limits = match &mine {
        Some(k) => crate::ratelimit::merge_limits(settings.policy.default_rate_limits(), &k.rate_limits),
        None => settings.policy.session_rate_limits(c.user_role.as_deref().unwrap_or("")).to_vec(),
    };
    let who = Caller {
        scopes: &c.scopes,
        user_id: c.user_id.as_deref(),
        user_role: c.user_role.as_deref(),
        expires_at: mine.as_ref().and_then(|k| k.expires_at),
        limits: &limits,
        consistency: mine.as_ref().map_or(crate::records::Consistency::Strict, |k| k.consistency),
        allowed_ips: mine.as_ref().map_or(&[][..], |k| &k.allowed_ips[..]),
        meta: mine.as_ref().and_then(|k| k.meta.as_deref()),
        credits: mine.as_ref().is_some_and(|k| k.credits.is_some()),
    };
    Ok(check(&settings.policy, &who)?)
}

/// Caps on live keys, for one more (minted, or rolled): per org, and per
/// minting key, which must itself be live. `replaced`: a live key that ends
/// as this one is added (a roll with no grace), so it holds no place.
fn room_for_key(
    sql: &SqlStorage,
    env: &Env,
    now: i64,
    parent: Option<&str>,
    replaced: Option<&KeyRecord>,
) -> Result<(), Refusal> {
    let settings = super::settings(env)?;
    let live = count(sql, LIVE_KEYS, now, None)?;
    if live.saturating_sub(u32::from(replaced.is_some())) >= settings.max_keys_per_org {
        let message =
            format!("This org has {live} live API keys, its limit (MAX_KEYS_PER_ORG): revoke keys before adding more.");
        return Err(ApiError::with_message(ErrorCode::KeyLimitReached, message).into());
    }
    if let Some(parent) = parent {
        // The minting key was revoked since the gate let it through (or is
        // being revoked right now): its child would outlive it.
        match load_key(sql, parent)? {
            Some((_, k)) if k.revoked_at.is_none() && k.rolled_to.is_some() => return Err(rolled_caller().into()),
            Some((_, k)) if k.revoked_at.is_none() => {}
            _ => return Err(ApiError::new(ErrorCode::InvalidApiKey).into()),
        }
        let same_parent = replaced.is_some_and(|k| k.parent_id.as_deref() == Some(parent));
        let minted = count(sql, LIVE_CHILDREN, now, Some(parent))?;
        if minted.saturating_sub(u32::from(same_parent)) >= settings.max_keys_per_parent {
            let message = format!(
                "The minting key has {minted} live API keys, its limit (MAX_KEYS_PER_PARENT): revoke some first."
            );
            return Err(ApiError::with_message(ErrorCode::KeyLimitReached, message).into());
        }
    }
    Ok(())
}

/// A key rolled to a successor lives out its grace but manages no keys
/// (holding it during the grace must not let anyone roll or end the
/// successor, or mint).
fn rolled_caller() -> ApiError {
    ApiError::with_message(
        ErrorCode::PermissionDenied,
        "This API key was rolled: it works until its grace ends but manages no keys (its successor does).",
    )
}

/// A key's hash and record.
fn load_key(sql: &SqlStorage, key_id: &str) -> Result<Option<(String, KeyRecord)>, Refusal> {
    match rows(sql, "SELECT hash, record FROM keys WHERE id = ?", Some(vec![key_id.into()]))?.first() {
        Some(r) => Ok(Some((
            text(r.first())?,
            crate::from_json(&text(r.get(1))?).map_err(|e| super::unavailable("key decode", e))?,
        ))),
        None => Ok(None),
    }
}

/// A key that is neither revoked nor expired at `now`; else 404 (an update
/// or a roll has nothing to act on: documented).
fn live_key(sql: &SqlStorage, key_id: &str, now: i64) -> Result<(String, KeyRecord), Refusal> {
    match load_key(sql, key_id)? {
        Some((h, k)) if k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now) => Ok((h, k)),
        _ => Err(ApiError::with_message(
            ErrorCode::ResourceNotFound,
            "No live API key has this id (revoked and expired keys cannot change).",
        )
        .into()),
    }
}

/// Every key of a roll family, revoked ones included.
const FAMILY_ALL: &str = "SELECT id FROM keys WHERE id = ?1 OR json_extract(record, '$.guard_id') = ?1";

/// The keys of the roll family `guard` that are not revoked (expired ones
/// included), with their hashes.
fn family(sql: &SqlStorage, guard: &str) -> Result<Vec<(String, KeyRecord)>, Refusal> {
    let query = "SELECT hash, record FROM keys WHERE revoked_at IS NULL AND (id = ?1 OR json_extract(record, '$.guard_id') = ?1)";
    rows(sql, query, Some(vec![guard.into()]))?
        .iter()
        .map(|r| {
            Ok((text(r.first())?, crate::from_json(&text(r.get(1))?).map_err(|e| super::unavailable("key decode", e))?))
        })
        .collect()
}

/// Gives a key's guard its new record (an update, a roll's end): 503 if it
/// does not confirm, saying the change is saved (an update's; a roll says
/// its own).
async fn tell_guard(env: &Env, k: &KeyRecord, fault: Fault) -> Result<(), Refusal> {
    let update = GuardRequest::Update { record: Box::new(k.clone()) };
    match super::guard::call_with(env, k.guard(), &update, None, fault).await {
        Ok(GuardReply::Recorded) => Ok(()),
        Ok(_) => Err(super::unavailable("key guard", "unexpected reply to an update")),
        Err(e) => {
            worker::console_warn!("keyward: the guard of key {} did not take its update: {e}", k.id);
            let message = "The change is saved, but the key's guard did not confirm it: until a retry of this request succeeds it may take up to a minute to apply everywhere.";
            Err(ApiError::with_message(ErrorCode::ServiceUnavailable, message).into())
        }
    }
}

/// Most rounds of a cascade revocation (each finds the keys minted while
/// the previous one awaited its tombstones; in practice one or two).
const MAX_CASCADE_ROUNDS: usize = 8;

/// Live keys: not revoked, not expired (`?1` is now).
const LIVE_KEYS: &str = "SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL
  AND (json_extract(record, '$.expires_at') IS NULL OR json_extract(record, '$.expires_at') > ?1)";
/// Live keys minted by the key `?2`.
const LIVE_CHILDREN: &str = "SELECT COUNT(*) FROM keys WHERE revoked_at IS NULL
  AND (json_extract(record, '$.expires_at') IS NULL OR json_extract(record, '$.expires_at') > ?1)
  AND json_extract(record, '$.parent_id') = ?2";
/// The keys minted by the key `?`, revoked ones included (a repeated
/// revoke repairs their KV records too).
const DESCENDANTS: &str = "SELECT id, hash, record FROM keys WHERE json_extract(record, '$.parent_id') = ?";

fn count(sql: &SqlStorage, query: &str, now: i64, parent: Option<&str>) -> Result<u32, Refusal> {
    let mut args: Vec<SqlStorageValue> = vec![now.into()];
    args.extend(parent.map(SqlStorageValue::from));
    let n = rows(sql, query, Some(args))?.first().map(|r| int(r.first())).transpose()?.unwrap_or(0);
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

fn load_user(sql: &SqlStorage, user_id: &str) -> Result<Option<UserRow>, Refusal> {
    match rows(sql, "SELECT role, disabled FROM users WHERE id = ?", Some(vec![SqlStorageValue::from(user_id)]))?
        .first()
    {
        Some(r) => Ok(Some(UserRow { role: text(r.first())?, disabled: int(r.get(1))? != 0 })),
        None => Ok(None),
    }
}
