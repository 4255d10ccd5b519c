//! The leaked-key endpoint's I/O ([`crate::scanning`]): the signature
//! checked by WebCrypto, each candidate looked up in KV by its hash, the
//! live ones revoked by their org's object (with their descendants).

use js_sys::Uint8Array;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
use worker::{Env, Request, Response};

use super::jwt::{import_key, js, subtle_verify};
use super::{call_org, json_response, read_body, settings, unavailable, KV_BINDING};
use crate::admin::{OrgCommand, OrgRequest};
use crate::authorize::Refusal;
use crate::error::{ApiError, ErrorCode};
use crate::records::KeyRecord;
use crate::scanning::{self as core, ScannerKey};

/// Where GitHub posts matches (configure it in the partner program).
pub(super) const PATH: &str = "/v1/secret-scanning/verify";

pub(super) async fn handle(mut req: Request, env: &Env, request_id: &str, now: i64) -> Result<Response, Refusal> {
    let settings = settings(env)?;
    let Some(keys) = &settings.scanner_keys else { return Err(ErrorCode::RouteNotFound.into()) };
    if req.inner().method() != "POST" {
        return Err(Refusal {
            error: ApiError::new(ErrorCode::MethodNotAllowed),
            headers: vec![("Allow", "POST".into())],
        });
    }
    let header = |n: &str| req.headers().get(n).ok().flatten().unwrap_or_default();
    let (key_id, signature) = (header("github-public-key-identifier"), header("github-public-key-signature"));
    let body = read_body(&mut req, core::MAX_BODY_BYTES).await?;
    let unauthorized = || Refusal::from(ErrorCode::SecretScanningUnauthorized);
    let key = keys.iter().find(|k| k.id == key_id).ok_or_else(unauthorized)?;
    let raw =
        core::b64_decode(signature.trim()).and_then(|d| core::der_signature_to_raw(&d)).ok_or_else(unauthorized)?;
    match verify(key, &raw, &body).await {
        Ok(true) => {}
        Ok(false) => return Err(unauthorized()),
        Err(e) => return Err(unavailable("secret-scanning signature check", e)),
    }
    let batch = core::parse_batch(&body).map_err(|e| ApiError::with_message(ErrorCode::InvalidRequest, e))?;
    let kv = super::kv::namespace(env, KV_BINDING).map_err(|e| unavailable("KV binding", e))?;
    // Every lookup first: a record that cannot be read fails the batch
    // before anything is revoked.
    let mut found = Vec::with_capacity(batch.len());
    for c in &batch {
        let record: Option<KeyRecord> = match crate::authorize::parse_key(&settings.config.format, &c.token) {
            Ok(k) if c.token.len() <= core::MAX_TOKEN_LEN => {
                super::gate::read_json(&kv, &k.hash().kv_key(), super::faults::Fault::none()).await?
            }
            _ => None,
        };
        found.push(record);
    }
    let mut answers = Vec::with_capacity(batch.len());
    for (c, record) in batch.iter().zip(found) {
        let leaked = match record {
            Some(r) if r.revoked_at.is_none() && r.expires_at.is_none_or(|e| e > now) => {
                revoke(env, &r, &c.url, request_id, now).await?;
                true
            }
            // Revoked as leaked before (reported again, or GitHub's retry
            // after a batch that failed midway): still a real secret.
            Some(r) => r.leaked_at.is_some(),
            None => false,
        };
        answers.push(core::answer(&c.token, &c.token_type, leaked));
    }
    Ok(json_response(200, crate::json::array(&answers), request_id))
}

async fn verify(key: &ScannerKey, signature: &[u8; 64], body: &[u8]) -> Result<bool, String> {
    let der = JsValue::from(Uint8Array::from(&key.spki[..]));
    let import = js(r#"{"name":"ECDSA","namedCurve":"P-256"}"#)?;
    let promise = import_key("spki", &der, &import, false, &js(r#"["verify"]"#)?).map_err(|e| format!("{e:?}"))?;
    let crypto_key = JsFuture::from(promise).await.map_err(|e| format!("importKey: {e:?}"))?;
    let alg = js(r#"{"name":"ECDSA","hash":"SHA-256"}"#)?;
    let promise = subtle_verify(&alg, &crypto_key, signature, body).map_err(|e| format!("{e:?}"))?;
    let ok = JsFuture::from(promise).await.map_err(|e| format!("verify: {e:?}"))?;
    Ok(ok.as_bool() == Some(true))
}

/// Revokes a leaked key (and what it minted) in its org's object, audited as
/// `key.leaked` by `secret_scanning`.
async fn revoke(env: &Env, key: &KeyRecord, url: &str, request_id: &str, now: i64) -> Result<(), Refusal> {
    let command = OrgCommand::RevokeKey {
        org_id: key.org_id.clone(),
        key_id: key.id.clone(),
        caller: None,
        leaked_at_url: Some(url.to_owned()),
    };
    let request = OrgRequest { command, actor: "secret_scanning".into(), request_id: request_id.into(), now_ms: now };
    match call_org(env, &key.org_id, &request).await? {
        (200, _) => Ok(()),
        (status, body) => Err(unavailable("org object", format!("revoking a leaked key: {status} {body}"))),
    }
}
