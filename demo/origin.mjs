// Demo and test origin: answers every request with a JSON echo of what it
// received (method, path, query, headers, body), and keeps the last requests
// for tests at GET /__origin/log (only reachable directly, never through
// keyward, whose policy has no such route).
//
//   PORT=8788 node demo/origin.mjs
//
// A request carrying `x-test-delay-ms: N` is answered after N ms (timeout tests);
// one carrying `x-test-origin-cors` gets `access-control-allow-origin: *`;
// one carrying `x-test-vary: V` gets `vary: V`; one carrying
// `x-test-response-headers: {"name": "value", …}` (JSON) gets those headers.
// A request whose body ends in an error (the sender aborted it) is logged
// with `aborted: true` and the bytes that arrived. One carrying
// `x-test-reset-after-bytes: N` gets a 200 whose body stops after N bytes:
// the connection is destroyed (a reset) midway, with the body chunked or,
// with `x-test-reset-declared-length: M`, with `content-length: M`.
//
// It also plays the identity provider for JWT user sessions (the tokens
// keyward verifies at the edge). At start it makes an Ed25519 signing key,
// kid "demo-ed25519-1" (or loads it from DEMO_JWT_PRIVATE_JWK, a JSON private
// OKP JWK; its own kid, if any, is ignored), and serves:
//
//   GET  /.well-known/jwks.json   {"keys": [the demo key's public JWK (kid,
//                                 alg "EdDSA", use "sig"), ...extra keys]},
//                                 cache-control: max-age=300
//   POST /api/v1/auth/login       {"email", "password"} → 200 {"access_token",
//                                 "refresh_token", "token_type": "bearer",
//                                 "expires_in": 900}; wrong credentials → 401
//                                 {"detail": "Invalid email or password"}
//   POST /api/v1/auth/refresh     {"refresh_token"} → 200, the same shape as
//                                 the login's (a fresh access token, the same
//                                 refresh token); invalid → 401
//                                 {"detail": "Invalid refresh token"}
//
// Users come from DEMO_USERS (JSON: email → {"password", "sub", "org_id"});
// by default admin@demo.test / demo-admin (user_demo) and viewer@demo.test /
// demo-viewer (user_viewer), both in org_demo. An access token is EdDSA with
// the header {alg, kid, typ: "JWT"} and the claims iss (JWT_ISSUER, default
// https://idp.keyward.test), aud (JWT_AUDIENCE, default keyward-demo), sub,
// org_id, iat, nbf = iat, exp = iat + 900 and a random jti. A refresh token
// is signed by the same key, lives 7 days and has the audience
// "<aud>:refresh", so it never passes as an access token.
//
// These routes are logged like every other request (malformed bodies get a
// 400, other methods a 405); the x-test-* headers above do not apply to them.
// Test hooks, only reachable directly and not logged:
//
//   POST /__origin/jwks           {"keys": [...]}: the extra keys served after
//                                 the demo key (replaces the previous extra
//                                 set; {"keys": []} clears it) → 204
//   POST /__origin/jwks_down      {"down": true|false}: while down, the JWKS
//                                 answers 503 → 204
//   POST /__origin/jwks_delay     {"ms": N}: the JWKS answers after N ms (0
//                                 by default) → 204
//   GET  /__origin/jwks_fetches   {"count": N}: requests for the JWKS since
//                                 start (any method, down or not; not reset by
//                                 /__origin/reset)
import http from "node:http";
import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import { SignJWT, exportJWK, generateKeyPair, importJWK, jwtVerify } from "jose";

const port = Number(process.env.PORT || 8788);
const log = [];
// A fake Turnstile siteverify (tests and `make dev`): with the secret
// TURNSTILE_TEST_SECRET, the token "pass:<hostname>" passes for that
// hostname, anything else fails. GET /__turnstile/calls lists the calls.
const turnstileSecret = process.env.TURNSTILE_TEST_SECRET || "test-turnstile-secret-0123456789abcdef";
const turnstileCalls = [];

// The identity provider (JWT user sessions): its signing key, users and
// routes, and the JWKS test hooks' state.
const KID = "demo-ed25519-1";
const ACCESS_TTL = 900; // seconds
const REFRESH_TTL = 7 * 24 * 3600;
const issuer = process.env.JWT_ISSUER || "https://idp.keyward.test";
const audience = process.env.JWT_AUDIENCE || "keyward-demo";
const refreshAudience = `${audience}:refresh`;
const DEFAULT_USERS = {
  "admin@demo.test": { password: "demo-admin", sub: "user_demo", org_id: "org_demo" },
  "viewer@demo.test": { password: "demo-viewer", sub: "user_viewer", org_id: "org_demo" },
};
const users = loadUsers();
const signing = await loadSigningKey();
let extraKeys = []; // POST /__origin/jwks
let jwksDown = false; // POST /__origin/jwks_down
let jwksDelayMs = 0; // POST /__origin/jwks_delay
let jwksFetches = 0; // GET /__origin/jwks_fetches

// A bad DEMO_USERS or DEMO_JWT_PRIVATE_JWK stops the origin at start.
function fail(message) {
  console.error(`origin: ${message}`);
  process.exit(1);
}

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function loadUsers() {
  const text = process.env.DEMO_USERS;
  const given = text ? parseJson(text) : DEFAULT_USERS;
  if (!isObject(given)) fail("DEMO_USERS must be a JSON object: email → {password, sub, org_id}");
  const map = new Map(); // a Map: no "__proto__" or "toString" user by accident
  for (const [email, u] of Object.entries(given)) {
    if (!isObject(u) || ![u.password, u.sub, u.org_id].every((f) => typeof f === "string")) {
      fail(`DEMO_USERS[${JSON.stringify(email)}] needs the strings password, sub and org_id`);
    }
    map.set(email, u);
  }
  return map;
}

// The demo key: from DEMO_JWT_PRIVATE_JWK, or a fresh one each start.
async function loadSigningKey() {
  let jwk;
  if (process.env.DEMO_JWT_PRIVATE_JWK) {
    jwk = parseJson(process.env.DEMO_JWT_PRIVATE_JWK);
    if (!isObject(jwk) || jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.x !== "string" || typeof jwk.d !== "string") {
      fail("DEMO_JWT_PRIVATE_JWK must be a private Ed25519 JWK (kty OKP, crv Ed25519, x, d)");
    }
  } else {
    const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
    jwk = await exportJWK(privateKey);
  }
  const { kty, crv, x, d } = jwk;
  let privateKey, publicKey;
  try {
    privateKey = await importJWK({ kty, crv, x, d }, "EdDSA");
    publicKey = await importJWK({ kty, crv, x }, "EdDSA");
    // x must be d's public half: a token signed with d verifies with x.
    await jwtVerify(await new SignJWT({}).setProtectedHeader({ alg: "EdDSA" }).sign(privateKey), publicKey);
  } catch (err) {
    fail(`DEMO_JWT_PRIVATE_JWK: not a usable Ed25519 key pair (${err.message})`);
  }
  return { privateKey, publicKey, publicJwk: { kty, crv, x, kid: KID, alg: "EdDSA", use: "sig" } };
}

// An access token and, unless one is given back (a refresh), a refresh token.
async function issueTokens(sub, orgId, refreshToken) {
  const now = Math.floor(Date.now() / 1000);
  const sign = (aud, ttl) =>
    new SignJWT({ sub, org_id: orgId })
      .setProtectedHeader({ alg: "EdDSA", kid: KID, typ: "JWT" })
      .setIssuer(issuer)
      .setAudience(aud)
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + ttl)
      .setJti(randomUUID())
      .sign(signing.privateKey);
  return {
    access_token: await sign(audience, ACCESS_TTL),
    refresh_token: refreshToken ?? (await sign(refreshAudience, REFRESH_TTL)),
    token_type: "bearer",
    expires_in: ACCESS_TTL,
  };
}

// Passwords compared in constant time (hashes, so the lengths match).
function sameSecret(a, b) {
  const hash = (s) => createHash("sha256").update(s, "utf8").digest();
  return timingSafeEqual(hash(a), hash(b));
}

function json(res, status, value, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", "x-origin": "demo", ...headers });
  res.end(JSON.stringify(value));
}

function methodNotAllowed(res, allow) {
  json(res, 405, { detail: "Method Not Allowed" }, { allow });
}

function readBody(req, done) {
  const parts = [];
  req.on("data", (c) => parts.push(c));
  req.on("end", () => done(Buffer.concat(parts).toString("utf8")));
}

const NO_STORE = { "cache-control": "no-store" };

// The identity provider's routes, by path (the query is ignored), called once
// the request is logged; `body` is the request body as text.
const IDP_ROUTES = {
  "/.well-known/jwks.json": async (req, res) => {
    jwksFetches++;
    if (req.method !== "GET" && req.method !== "HEAD") return methodNotAllowed(res, "GET, HEAD");
    if (jwksDelayMs > 0) await new Promise((r) => setTimeout(r, jwksDelayMs));
    if (jwksDown) return json(res, 503, { detail: "JWKS unavailable" }, NO_STORE);
    json(res, 200, { keys: [signing.publicJwk, ...extraKeys] }, { "cache-control": "max-age=300" });
  },
  "/api/v1/auth/login": async (req, res, body) => {
    if (req.method !== "POST") return methodNotAllowed(res, "POST");
    const input = parseJson(body);
    if (!isObject(input) || typeof input.email !== "string" || typeof input.password !== "string") {
      return json(res, 400, { detail: 'Expected a JSON body {"email", "password"}' });
    }
    const user = users.get(input.email);
    if (!user || !sameSecret(input.password, user.password)) {
      return json(res, 401, { detail: "Invalid email or password" });
    }
    json(res, 200, await issueTokens(user.sub, user.org_id), NO_STORE);
  },
  "/api/v1/auth/refresh": async (req, res, body) => {
    if (req.method !== "POST") return methodNotAllowed(res, "POST");
    const input = parseJson(body);
    if (!isObject(input) || typeof input.refresh_token !== "string") {
      return json(res, 400, { detail: 'Expected a JSON body {"refresh_token"}' });
    }
    let claims;
    try {
      ({ payload: claims } = await jwtVerify(input.refresh_token, signing.publicKey, {
        issuer,
        audience: refreshAudience,
        algorithms: ["EdDSA"],
        requiredClaims: ["sub", "exp"],
      }));
    } catch {
      // Expired, forged, an access token, not a JWT at all: all the same here.
    }
    if (!claims || typeof claims.sub !== "string" || typeof claims.org_id !== "string") {
      return json(res, 401, { detail: "Invalid refresh token" });
    }
    json(res, 200, await issueTokens(claims.sub, claims.org_id, input.refresh_token), NO_STORE);
  },
};

// The JWKS test hooks (POST, JSON body): each returns an error, or nothing.
const JWKS_HOOKS = {
  "/__origin/jwks": (v) => {
    if (!isObject(v) || !Array.isArray(v.keys)) return 'Expected {"keys": [...]}';
    extraKeys = v.keys;
  },
  "/__origin/jwks_down": (v) => {
    if (!isObject(v) || typeof v.down !== "boolean") return 'Expected {"down": true|false}';
    jwksDown = v.down;
  },
  "/__origin/jwks_delay": (v) => {
    if (!isObject(v) || !Number.isSafeInteger(v.ms) || v.ms < 0) return 'Expected {"ms": N}, N >= 0';
    jwksDelayMs = v.ms;
  },
};

const server = http.createServer((req, res) => {
  if (req.url === "/__origin/log") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(log));
    return;
  }
  if (req.url === "/__turnstile/calls") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify(turnstileCalls));
    return;
  }
  if (req.url === "/__turnstile/siteverify" && req.method === "POST") {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => {
      let call = {};
      try {
        call = JSON.parse(Buffer.concat(parts).toString("utf8"));
      } catch {
        // Not JSON: fails below.
      }
      turnstileCalls.push({ ...call, secret_ok: call.secret === turnstileSecret, content_type: req.headers["content-type"] });
      if (turnstileCalls.length > 1000) turnstileCalls.shift();
      const token = String(call.response || "");
      let answer = { success: false, "error-codes": ["invalid-input-response"] };
      if (call.secret !== turnstileSecret) answer = { success: false, "error-codes": ["invalid-input-secret"] };
      else if (token.startsWith("pass:")) answer = { success: true, hostname: token.slice(5), "error-codes": [] };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    });
    return;
  }
  if (req.url === "/__origin/reset" && req.method === "POST") {
    log.length = 0;
    res.writeHead(204);
    res.end();
    return;
  }
  if (req.url === "/__origin/jwks_fetches") {
    json(res, 200, { count: jwksFetches });
    return;
  }
  if (req.method === "POST" && Object.hasOwn(JWKS_HOOKS, req.url)) {
    readBody(req, (text) => {
      const error = JWKS_HOOKS[req.url](parseJson(text));
      if (error) json(res, 400, { detail: error });
      else {
        res.writeHead(204);
        res.end();
      }
    });
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  let ended = false;
  const aborted = () => {
    if (ended) return;
    ended = true;
    const [path, ...q] = req.url.split("?");
    log.push({
      method: req.method,
      url: req.url,
      path,
      query: q.join("?"),
      headers: req.headers,
      body: Buffer.concat(chunks).toString("utf8"),
      aborted: true,
      at: Date.now(),
    });
    if (log.length > 5000) log.shift();
  };
  req.on("aborted", aborted);
  req.on("error", aborted);
  req.on("end", () => {
    if (ended) return;
    ended = true;
    const body = Buffer.concat(chunks).toString("utf8");
    const [path, ...q] = req.url.split("?");
    const entry = {
      method: req.method,
      url: req.url,
      path,
      query: q.join("?"),
      headers: req.headers,
      body,
      at: Date.now(),
    };
    log.push(entry);
    if (log.length > 5000) log.shift();
    if (Object.hasOwn(IDP_ROUTES, path)) {
      IDP_ROUTES[path](req, res, body).catch((err) => {
        console.error(`origin: ${req.method} ${path}: ${err.stack || err}`);
        if (!res.headersSent) json(res, 500, { detail: "Internal error" });
        else res.destroy();
      });
      return;
    }
    const resetAfter = Number(req.headers["x-test-reset-after-bytes"] || 0);
    if (resetAfter > 0) {
      // Fault tests: the origin goes away in the middle of its body.
      const headers = { "content-type": "text/plain", "x-origin": "demo" };
      const declared = Number(req.headers["x-test-reset-declared-length"] || 0);
      if (declared > 0) headers["content-length"] = String(declared);
      res.writeHead(200, headers);
      res.write("x".repeat(resetAfter));
      setTimeout(() => res.socket.destroy(), 300);
      return;
    }
    const delay = Number(req.headers["x-test-delay-ms"] || 0);
    setTimeout(() => {
      const headers = { "content-type": "application/json", "x-origin": "demo" };
      // Tests: an origin that sets its own CORS headers (keyward must drop them).
      if (req.headers["x-test-origin-cors"]) headers["access-control-allow-origin"] = "*";
      if (req.headers["x-test-vary"]) headers["vary"] = req.headers["x-test-vary"];
      if (req.headers["x-test-response-headers"]) {
        try {
          Object.assign(headers, JSON.parse(req.headers["x-test-response-headers"]));
        } catch {
          // Not JSON: ignored.
        }
      }
      res.writeHead(200, headers);
      res.end(JSON.stringify({ echo: entry }));
    }, delay);
  });
});

server.listen(port, "127.0.0.1", () => {
  console.log(`origin listening on http://127.0.0.1:${port}`);
});
