//! Pass-through baseline: forwards method, path, query, headers and the
//! streamed body to `ORIGIN_URL` and returns the origin's response as is.
//! No authorization, no storage, no signing.

use worker::{event, Context, Env, Fetch, Request, RequestInit, Response, Result};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let origin = env.var("ORIGIN_URL")?.to_string();
    let url = req.url()?;
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
