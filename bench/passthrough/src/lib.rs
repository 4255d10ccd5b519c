//! Baseline workers of `make bench`, one crate, chosen by the `MODE` var:
//!
//! - `plain` (b): forwards method, path, query, headers and the streamed
//!   body to `ORIGIN_URL` and returns the origin's response as is.
//! - `kv` (b1): the same after one KV read of a fixed small value (the org
//!   record keyward reads on every strict request, `org:org_bench`).
//! - `kv_do` (b2): the same after one KV read and one call to a Durable
//!   Object (a trivial class, no storage), run concurrently as keyward runs
//!   its org read and its guard check.
//!
//! No authorization, no storage writes, no signing: the floor of keyward's
//! own I/O. `GET /__passthrough/io` (with `Authorization: Bearer
//! <ADMIN_TOKEN>`) answers the isolate's counters — KV reads, Durable
//! Object calls, requests — so the bench counts this I/O rather than
//! assuming it; `PUT /__passthrough/seed` writes the value read in `kv`
//! modes (the bench calls it once at startup).

use std::cell::Cell;

use worker::{
    durable_object, event, Context, DurableObject, Env, Fetch, Method, Request, RequestInit, Response, Result, State,
};

/// The KV key read in the `kv` modes, and the value `seed` writes there: a
/// record the size of keyward's org record.
const KV_KEY: &str = "org:org_bench";
const KV_VALUE: &str = r#"{"id":"org_bench","name":"Bench Org","baa_active":true,"updated_at":1764000000000}"#;

thread_local! {
    /// KV reads, Durable Object calls, requests (this isolate).
    static IO: Cell<[u64; 3]> = const { Cell::new([0; 3]) };
}

fn count(i: usize) {
    IO.with(|c| {
        let mut v = c.get();
        v[i] += 1;
        c.set(v);
    });
}

fn admin(req: &Request, env: &Env) -> bool {
    let token =
        env.secret("ADMIN_TOKEN").map(|s| s.to_string()).or_else(|_| env.var("ADMIN_TOKEN").map(|v| v.to_string()));
    match (token, req.headers().get("authorization").ok().flatten()) {
        (Ok(t), Some(h)) => !t.is_empty() && h == format!("Bearer {t}"),
        _ => false,
    }
}

async fn kv_read(env: &Env) -> Result<bool> {
    count(0);
    Ok(env.kv("BENCH_KV")?.get(KV_KEY).text().await?.is_some())
}

async fn do_call(env: &Env) -> Result<bool> {
    count(1);
    let stub = env.durable_object("FLOOR")?.id_from_name("bench")?.get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(r#"{"check":1}"#.into()));
    let mut resp = stub.fetch_with_request(Request::new_with_init("https://floor.internal/", &init)?).await?;
    let _ = resp.text().await?;
    Ok(resp.status_code() == 200)
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    match url.path() {
        "/__passthrough/io" if admin(&req, &env) => {
            let [kv_reads, do_calls, requests] = IO.with(Cell::get);
            return Response::ok(format!(r#"{{"kv_reads":{kv_reads},"do_calls":{do_calls},"requests":{requests}}}"#));
        }
        "/__passthrough/seed" if req.method() == Method::Put && admin(&req, &env) => {
            env.kv("BENCH_KV")?.put(KV_KEY, KV_VALUE)?.execute().await?;
            return Response::ok("seeded");
        }
        _ => {}
    }
    count(2);
    let mode = env.var("MODE").map(|v| v.to_string()).unwrap_or_else(|_| "plain".into());
    let ready = match mode.as_str() {
        "plain" => true,
        "kv" => kv_read(&env).await?,
        "kv_do" => {
            let (kv, obj) = futures_util::future::join(kv_read(&env), do_call(&env)).await;
            kv? && obj?
        }
        other => return Response::error(format!("MODE must be plain, kv or kv_do, not {other:?}"), 500),
    };
    if !ready {
        // Not seeded (or the object failed): never a silent 200.
        return Response::error("baseline not provisioned", 503);
    }
    let origin = env.var("ORIGIN_URL")?.to_string();
    let mut target = format!("{}{}", origin.trim_end_matches('/'), url.path());
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(req.headers().clone());
    if let Some(body) = req.inner().body() {
        init.with_body(Some(body.into()));
    }
    Fetch::Request(Request::new_with_init(&target, &init)?).send().await
}

/// The Durable Object of `kv_do`: reads the request body and answers a tiny
/// body. No storage.
#[durable_object]
pub struct Floor {
    _state: State,
}

impl DurableObject for Floor {
    fn new(state: State, _env: Env) -> Self {
        Self { _state: state }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let _ = req.text().await?;
        Response::ok(r#"{"ok":true}"#)
    }
}
