// The Worker's entry: the Rust fetch handler built by worker-build, behind
// one last safety net. The Rust code answers every error itself with an
// envelope; only a panic (a wasm trap, i.e. a bug) escapes it. A panic inside
// an async handler never settles its promise, so the Rust panic hook calls
// `__keywardPanic`, which fails every request pending in this instance; each
// then answers the same `500 INTERNAL_ERROR` envelope with an `X-Request-Id`
// instead of hanging. worker-build's shim re-instantiates the wasm module for
// the next request.
import { WorkerEntrypoint } from "cloudflare:workers";
import Inner, { KeyGuard, OrgStore } from "../build/index.js";

export { KeyGuard, OrgStore };

const pending = new Set();
globalThis.__keywardPanic = () => {
  for (const fail of pending) fail(new Error("panic"));
  pending.clear();
};

// Uploads of unknown length (chunked, or HTTP/2 without Content-Length) go
// to the origin through this pump (src/edge/gate.rs, upload_guard): when
// the client's stream fails midway, workerd would end the chunked body
// cleanly on a reused connection to the origin, which would then store a
// truncated upload as whole. The pump aborts the origin fetch first, so
// the origin sees the request fail. A failure on the origin's side (it
// answered early, or went away) only stops reading the client: the
// origin's answer is not cut.
globalThis.__keywardUploadGuard = (body, controller) => {
  const { readable, writable } = new IdentityTransformStream();
  const reader = body.getReader();
  const writer = writable.getWriter();
  (async () => {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        controller.abort(e);
        writer.abort(e).catch(() => {});
        return;
      }
      if (chunk.done) {
        await writer.close().catch(() => {});
        return;
      }
      try {
        await writer.write(chunk.value);
      } catch (e) {
        reader.cancel(e).catch(() => {});
        return;
      }
    }
  })();
  return readable;
};

function requestId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return "req_" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function internalError() {
  const id = requestId();
  const body = JSON.stringify({
    success: false,
    error: {
      code: "INTERNAL_ERROR",
      type: "api_error",
      message: "An internal error occurred.",
      retryable: true,
      request_id: id,
    },
  });
  return new Response(body, {
    status: 500,
    headers: { "content-type": "application/json", "cache-control": "no-store", "x-request-id": id },
  });
}

export default class Keyward extends WorkerEntrypoint {
  async fetch(request) {
    let fail;
    const panicked = new Promise((_, reject) => {
      fail = reject;
    });
    pending.add(fail);
    try {
      return await Promise.race([new Inner(this.ctx, this.env).fetch(request), panicked]);
    } catch (e) {
      console.error(`keyward: unhandled failure: ${e && e.name}: ${e && e.message}`);
      return internalError();
    } finally {
      pending.delete(fail);
    }
  }
}
