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

use serde::Deserialize;
use serde_json::{json, Value};
use worker::{durable_object, DurableObject, Env, Request, Response, SqlStorage, SqlStorageValue, State};

use crate::admin::{OrgCommand, OrgRequest};
use crate::authorize::Refusal;
use crate::error::{success, ApiError, ErrorCode};
use crate::guard::{GuardReply, GuardRequest};
use crate::ids::rfc3339;
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
  created_at INTEGER NOT NULL, revoked_at INTEGER);
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
        Self { state, env }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let request: OrgRequest = match req.text().await.ok().and_then(|t| serde_json::from_str(&t).ok()) {
            Some(r) => r,
            None => return Ok(reply_err(&ApiError::new(ErrorCode::InternalError).into(), "req_unknown")),
        };
        let storage = self.state.storage();
        let env = self.env.clone();
        let rid = request.request_id.clone();
        let outcome =
            self.state.block_concurrency_while(async move { Ok(apply(storage.sql(), env, request).await) }).await;
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

async fn apply(sql: SqlStorage, env: Env, r: OrgRequest) -> Result<(u16, String), Refusal> {
    sql.exec(SCHEMA, None).map_err(sql_err)?;
    let kv = env.kv(super::KV_BINDING).map_err(|e| super::unavailable("KV binding", e))?;
    let now = r.now_ms;
    let audit = |action: &str, target: &str, detail: Value| -> Result<(), Refusal> {
        sql.exec(
            "INSERT INTO audit (at, actor, action, target, request_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                now.into(),
                r.actor.as_str().into(),
                action.into(),
                target.into(),
                r.request_id.as_str().into(),
                detail.to_string().into(),
            ],
        )
        .map(|_| ())
        .map_err(sql_err)
    };
    match &r.command {
        OrgCommand::UpsertOrg { org_id, name, baa_active } => {
            let prev = load_org(&sql)?;
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
                None => audit("org.created", org_id, json!({ "name": name, "baa_active": baa_active }))?,
                Some((p, _)) => {
                    if p.baa_active != *baa_active {
                        audit("org.baa_changed", org_id, json!({ "from": p.baa_active, "to": baa_active }))?;
                    }
                    if &p.name != name {
                        audit("org.renamed", org_id, json!({ "from": p.name, "to": name }))?;
                    }
                }
            }
            let created_at = prev.map_or(now, |(_, c)| c);
            let record = OrgRecord { id: org_id.clone(), name: name.clone(), baa_active: *baa_active, updated_at: now };
            put_kv(&kv, &org_kv_key(org_id), &record).await?;
            let data = json!({
                "id": record.id, "name": record.name, "baa_active": record.baa_active,
                "created_at": rfc3339(created_at), "updated_at": rfc3339(now),
            });
            Ok((200, success(data, None)))
        }
        OrgCommand::UpsertUser { org_id, user_id, role, disabled } => {
            require_org(&sql, org_id)?;
            let prev = load_user(&sql, user_id)?;
            sql.exec(
                "INSERT INTO users (id, role, disabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET role = excluded.role, disabled = excluded.disabled, updated_at = excluded.updated_at",
                vec![user_id.as_str().into(), role.as_str().into(), i64::from(*disabled).into(), now.into(), now.into()],
            )
            .map_err(sql_err)?;
            match &prev {
                None => audit("user.created", user_id, json!({ "role": role, "disabled": disabled }))?,
                Some(p) => {
                    if &p.role != role {
                        audit("user.role_changed", user_id, json!({ "from": p.role, "to": role }))?;
                    }
                    if p.disabled != *disabled {
                        audit(if *disabled { "user.disabled" } else { "user.enabled" }, user_id, json!({}))?;
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
            let data = json!({
                "id": record.id, "org_id": record.org_id, "role": record.role,
                "disabled": record.disabled, "updated_at": rfc3339(now),
            });
            Ok((200, success(data, None)))
        }
        OrgCommand::CreateKey { record, hash } => {
            require_org(&sql, &record.org_id)?;
            if let Some(uid) = &record.user_id {
                if load_user(&sql, uid)?.is_none() {
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
            audit(
                "key.created",
                &record.id,
                json!({ "name": record.name, "scopes": record.scopes, "user_id": record.user_id }),
            )?;
            Ok((201, success(key_view(record), None)))
        }
        OrgCommand::RevokeKey { org_id, key_id } => {
            require_org(&sql, org_id)?;
            #[derive(Deserialize)]
            struct Row {
                hash: String,
                record: String,
            }
            let rows: Vec<Row> = sql
                .exec("SELECT hash, record FROM keys WHERE id = ?", vec![key_id.as_str().into()])
                .and_then(|c| c.to_array())
                .map_err(sql_err)?;
            let Some(row) = rows.into_iter().next() else {
                return Err(ApiError::new(ErrorCode::ResourceNotFound).into());
            };
            let mut record: KeyRecord =
                serde_json::from_str(&row.record).map_err(|e| super::unavailable("key decode", e))?;
            // The tombstone in the key's guard first: from its answer on,
            // every check is refused, whatever KV still says. It keeps the
            // first revocation time, which the system of record adopts.
            let tombstone = GuardRequest::Revoke { revoked_at: record.revoked_at.unwrap_or(now) };
            let revoked_at = match super::guard::call(&env, key_id, &tombstone).await {
                Ok(GuardReply::RevokeRecorded { revoked_at }) => revoked_at,
                Ok(other) => return Err(super::unavailable("key guard", format!("unexpected reply {other:?}"))),
                Err(e) => return Err(super::unavailable("key guard", e)),
            };
            let first = record.revoked_at.is_none();
            record.revoked_at = Some(revoked_at);
            if first {
                let json_record = serde_json::to_string(&record).map_err(|e| super::unavailable("key encode", e))?;
                sql.exec(
                    "UPDATE keys SET record = ?, revoked_at = ? WHERE id = ?",
                    vec![json_record.as_str().into(), revoked_at.into(), key_id.as_str().into()],
                )
                .map_err(sql_err)?;
                audit("key.revoked", key_id, json!({}))?;
            }
            // Written again on a repeated revoke too, so a retry after a
            // failed KV write repairs the read model.
            put_kv(&kv, &key_kv_key(&row.hash), &record).await?;
            Ok((200, success(json!({ "id": key_id, "revoked_at": rfc3339(revoked_at) }), None)))
        }
    }
}

/// The public view of a key: never the hash or the plaintext.
pub(crate) fn key_view(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "kind": k.kind,
        "prefix": k.prefix,
        "last_four": k.last_four,
        "scopes": k.scopes,
        "user_id": k.user_id,
        "expires_at": k.expires_at.map(rfc3339),
        "created_at": rfc3339(k.created_at),
        "revoked_at": k.revoked_at.map(rfc3339),
        "rate_limits": k.rate_limits,
        "allowed_origins": k.allowed_origins,
        "resource_id": k.resource_id,
    })
}

async fn put_kv<T: serde::Serialize>(kv: &worker::kv::KvStore, key: &str, value: &T) -> Result<(), Refusal> {
    let text = serde_json::to_string(value).map_err(|e| super::unavailable("KV encode", e))?;
    kv.put(key, text)
        .map_err(|e| super::unavailable("KV put", e))?
        .execute()
        .await
        .map_err(|e| super::unavailable("KV put", e))
}

fn load_org(sql: &SqlStorage) -> Result<Option<(OrgRecord, i64)>, Refusal> {
    #[derive(Deserialize)]
    struct Row {
        id: String,
        name: String,
        baa_active: i64,
        created_at: i64,
        updated_at: i64,
    }
    let rows: Vec<Row> = sql
        .exec("SELECT id, name, baa_active, created_at, updated_at FROM org LIMIT 1", None)
        .and_then(|c| c.to_array())
        .map_err(sql_err)?;
    Ok(rows.into_iter().next().map(|r| {
        (OrgRecord { id: r.id, name: r.name, baa_active: r.baa_active != 0, updated_at: r.updated_at }, r.created_at)
    }))
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

fn load_user(sql: &SqlStorage, user_id: &str) -> Result<Option<UserRow>, Refusal> {
    #[derive(Deserialize)]
    struct Row {
        role: String,
        disabled: i64,
    }
    let rows: Vec<Row> = sql
        .exec("SELECT role, disabled FROM users WHERE id = ?", vec![SqlStorageValue::from(user_id)])
        .and_then(|c| c.to_array())
        .map_err(sql_err)?;
    Ok(rows.into_iter().next().map(|r| UserRow { role: r.role, disabled: r.disabled != 0 }))
}
