//! The KV namespace through its own methods: `get(key, "text")`,
//! `put(key, value)` and `delete(key)`. worker's `KvStore` serializes an options object for
//! every call (serde_wasm_bindgen and its option builders: much wasm for
//! two calls); the values, the failures and their logged text are the same.

use js_sys::Promise;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::Env;

#[wasm_bindgen]
extern "C" {
    /// A KV namespace binding.
    pub(crate) type KvNamespace;

    #[wasm_bindgen(method, catch, js_name = get)]
    fn get_as(this: &KvNamespace, key: &str, kind: &str) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    fn put(this: &KvNamespace, key: &str, value: &str) -> Result<Promise, JsValue>;

    #[wasm_bindgen(method, catch, js_name = delete)]
    fn delete_key(this: &KvNamespace, key: &str) -> Result<Promise, JsValue>;
}

/// A failed KV call, as worker's `KvError` shows it (the text
/// [`super::unavailable`] logs).
fn js_error(e: JsValue) -> String {
    format!("js error: {e:?}")
}

/// The namespace bound as `binding`; an error when it is not bound.
pub(crate) fn namespace(env: &Env, binding: &str) -> Result<KvNamespace, String> {
    let ns = js_sys::Reflect::get(env, &JsValue::from(binding)).map_err(js_error)?;
    if ns.is_undefined() {
        return Err(format!("invalid kv store: {binding}"));
    }
    Ok(ns.unchecked_into())
}

impl KvNamespace {
    /// The value of `key` as text; `None` when there is none.
    pub(crate) async fn text(&self, key: &str) -> Result<Option<String>, String> {
        let value = JsFuture::from(self.get_as(key, "text").map_err(js_error)?).await.map_err(js_error)?;
        Ok(value.as_string())
    }

    /// Sets `key` to `value` (stored as its UTF-8 bytes).
    pub(crate) async fn put_text(&self, key: &str, value: &str) -> Result<(), String> {
        JsFuture::from(self.put(key, value).map_err(js_error)?).await.map(drop).map_err(js_error)
    }

    /// Deletes `key`.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), String> {
        JsFuture::from(self.delete_key(key).map_err(js_error)?).await.map(drop).map_err(js_error)
    }
}
