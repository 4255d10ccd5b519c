// Mints JWTs for keyward's end-to-end tests with jose, a JWT library nobody on
// the project wrote, so the tests do not check keyward against itself; and
// the malformed and hostile tokens a verifier must refuse, built by hand
// (node:crypto) where jose, rightly, will not make them.
//
//   node tests/jwt/mint.mjs keys <dir>
//
// Makes four key pairs, "ed-1" and "ed-2" (EdDSA, Ed25519; ed-2 for rotation
// tests), "es-1" (ES256, P-256) and "rs-1" (RS256, RSA 2048); writes their
// private JWKs to <dir>/private.json ({"keys": [...]}, each with kid, alg and
// use "sig"), the public JWKS to <dir>/jwks.json, and prints that JWKS (one
// line of JSON, the same bytes as jwks.json) on stdout. <dir> is created if
// needed; files already there are overwritten.
//
//   node tests/jwt/mint.mjs sign <dir> < specs.json
//
// Reads a JSON array of specs on stdin and prints a JSON array of compact
// tokens, in the same order, on stdout (one line). A spec:
//
//   {"kid": "ed-1", "alg": "EdDSA" | "ES256" | "RS256", "claims": {...},
//    "header": {...}}
//       Signed by that key. The claims are exactly those given (nothing such
//       as iat or exp is added). The header is {"alg", "kid", "typ": "JWT"}
//       with "header"'s fields added or overriding in place; a field given as
//       null is removed. "alg" may be left out: the key's own. The signing
//       algorithm is always the spec's alg, so {"header": {"alg": "RS256"}}
//       on ed-1 gives an RS256-labelled token with an Ed25519 signature.
//   {"alg": "none", "claims": {...}}
//       Unsigned: base64url({"alg":"none","typ":"JWT"}).base64url(claims).
//       (an empty signature); a "kid", if given, goes in the header.
//   {"alg": "HS256", "secret": "<utf-8 text>", "kid": ..., "claims": {...}}
//       HMAC-SHA256 with that secret; "kid" is optional.
//   {"alg": "HS256", "secret_from_public_jwk": "ed-1", "claims": {...}}
//       The key-confusion attack: HMAC-SHA256 whose secret is the UTF-8 of
//       JSON.stringify(that key's public JWK), i.e. exactly its entry's bytes
//       in jwks.json; the header is {"alg":"HS256","kid":"ed-1","typ":"JWT"}
//       ("kid" defaults to the key named; "alg" may be left out).
//   {"raw_header": "<json text>", "raw_payload": "<json text>", "kid": "ed-1",
//    "alg": "EdDSA"}
//       Signs exactly those texts (their UTF-8 bytes, base64url-encoded), for
//       duplicate members, odd spacing, non-object payloads and the like.
//       Any key form above works ("alg": "none", "secret", ...); "claims",
//       "header" and "tamper" do not apply.
//   "tamper": true (any form but the raw one)
//       Signed as above, then the payload part replaced by the same claims
//       with "sub" (which must be a string) changed to sub + "x": the
//       signature no longer matches.
//
// The header and payload are serialized with JSON.stringify, in the order the
// members were given. Where jose can make the token (the header's alg is the
// spec's, no "crit" or "b64", a non-empty HS256 secret) jose signs it;
// otherwise the signing input is built and signed by hand (Ed25519:
// crypto.sign(null, ...); ES256: SHA-256 with an IEEE P1363 r||s signature;
// RS256: RSASSA-PKCS1-v1_5 with SHA-256; HS256: HMAC-SHA256).
//
// Bad input (usage, a spec with an unknown field, a missing key, a mismatched
// alg, ...) exits non-zero with a message on stderr and nothing on stdout.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createHmac, createPrivateKey, sign as cryptoSign } from "node:crypto";
import { SignJWT, exportJWK, generateKeyPair, importJWK } from "jose";

// The keys `keys` makes, in the order they appear in the JWKS.
const KEYS = [
  { kid: "ed-1", alg: "EdDSA", options: { crv: "Ed25519" } },
  { kid: "ed-2", alg: "EdDSA", options: { crv: "Ed25519" } },
  { kid: "es-1", alg: "ES256", options: {} },
  { kid: "rs-1", alg: "RS256", options: { modulusLength: 2048 } },
];
const ASYMMETRIC = new Set(KEYS.map((k) => k.alg));
const SPEC_FIELDS = new Set([
  "kid",
  "alg",
  "claims",
  "header",
  "secret",
  "secret_from_public_jwk",
  "raw_header",
  "raw_payload",
  "tamper",
]);

// Bad input: reported on stderr, exit status 1 (2 for bad usage).
class InputError extends Error {}

function bad(message) {
  return new InputError(message);
}

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function b64u(text) {
  return Buffer.from(text, "utf8").toString("base64url");
}

function readJson(path) {
  let text;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw bad(`cannot read ${path} (run \`keys\` first?): ${err.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw bad(`${path} is not JSON: ${err.message}`);
  }
}

// `keys <dir>`.
async function makeKeys(dir) {
  mkdirSync(dir, { recursive: true });
  const privateJwks = [];
  const publicJwks = [];
  for (const { kid, alg, options } of KEYS) {
    const pair = await generateKeyPair(alg, { ...options, extractable: true });
    privateJwks.push({ ...(await exportJWK(pair.privateKey)), kid, alg, use: "sig" });
    publicJwks.push({ ...(await exportJWK(pair.publicKey)), kid, alg, use: "sig" });
  }
  const jwks = JSON.stringify({ keys: publicJwks });
  writeFileSync(join(dir, "private.json"), JSON.stringify({ keys: privateJwks }, null, 2) + "\n", { mode: 0o600 });
  writeFileSync(join(dir, "jwks.json"), jwks + "\n");
  process.stdout.write(jwks + "\n");
}

// `sign <dir>`: all specs are minted before anything is printed.
async function signAll(dir) {
  const keys = {
    private: byKid(readJson(join(dir, "private.json")), "private.json"),
    public: byKid(readJson(join(dir, "jwks.json")), "jwks.json"),
  };
  let text = "";
  for await (const chunk of process.stdin) text += chunk;
  let specs;
  try {
    specs = JSON.parse(text);
  } catch (err) {
    throw bad(`stdin is not JSON: ${err.message}`);
  }
  if (!Array.isArray(specs)) throw bad("stdin must be a JSON array of specs");
  const tokens = [];
  for (const [i, spec] of specs.entries()) {
    try {
      tokens.push(await mint(spec, keys));
    } catch (err) {
      if (err instanceof InputError) throw bad(`spec ${i} (${JSON.stringify(spec)}): ${err.message}`);
      throw err;
    }
  }
  process.stdout.write(JSON.stringify(tokens) + "\n");
}

function byKid(set, name) {
  if (!isObject(set) || !Array.isArray(set.keys)) throw bad(`${name} is not a JWKS ({"keys": [...]})`);
  return new Map(set.keys.map((jwk) => [jwk.kid, jwk]));
}

// One spec → one token.
async function mint(spec, keys) {
  if (!isObject(spec)) throw bad("a spec must be a JSON object");
  for (const field of Object.keys(spec)) {
    if (!SPEC_FIELDS.has(field)) throw bad(`unknown field "${field}"`);
  }
  if (spec.tamper !== undefined && typeof spec.tamper !== "boolean") throw bad('"tamper" must be true or false');
  if (spec.kid !== undefined && typeof spec.kid !== "string") throw bad('"kid" must be a string');
  const signer = signerFor(spec, keys);

  if (spec.raw_header !== undefined || spec.raw_payload !== undefined) {
    if (typeof spec.raw_header !== "string" || typeof spec.raw_payload !== "string") {
      throw bad('"raw_header" and "raw_payload" must both be given, as strings');
    }
    for (const field of ["claims", "header"]) {
      if (spec[field] !== undefined) throw bad(`"${field}" does not apply to a raw token`);
    }
    if (spec.tamper) throw bad('"tamper" does not apply to a raw token');
    return byHand(spec.raw_header, spec.raw_payload, signer.sign);
  }

  if (!isObject(spec.claims)) throw bad('"claims" must be a JSON object');
  if (spec.header !== undefined && !isObject(spec.header)) throw bad('"header" must be a JSON object');
  const header = withOverrides(signer.header, spec.header);
  let token;
  if (signer.jose && header.alg === signer.alg && !("crit" in header) && !("b64" in header)) {
    token = await new SignJWT(spec.claims).setProtectedHeader(header).sign(await signer.jose());
  } else {
    token = byHand(JSON.stringify(header), JSON.stringify(spec.claims), signer.sign);
  }

  if (spec.tamper) {
    if (typeof spec.claims.sub !== "string") throw bad('"tamper" needs a string "sub" claim');
    const [h, , s] = token.split(".");
    token = `${h}.${b64u(JSON.stringify({ ...spec.claims, sub: spec.claims.sub + "x" }))}.${s}`;
  }
  return token;
}

// What signs a spec's token: the algorithm, the default header, a node:crypto
// signing function and, where jose can do it, a function giving jose's key.
function signerFor(spec, keys) {
  if (spec.alg !== undefined && typeof spec.alg !== "string") throw bad('"alg" must be a string');
  if (spec.secret !== undefined && spec.secret_from_public_jwk !== undefined) {
    throw bad('"secret" and "secret_from_public_jwk" cannot both be given');
  }

  if (spec.alg === "none") {
    if (spec.secret !== undefined || spec.secret_from_public_jwk !== undefined) throw bad('"alg": "none" takes no secret');
    const header = spec.kid === undefined ? { alg: "none", typ: "JWT" } : { alg: "none", kid: spec.kid, typ: "JWT" };
    return { alg: "none", header, sign: () => Buffer.alloc(0) };
  }

  if (spec.secret_from_public_jwk !== undefined) {
    if (spec.alg !== undefined && spec.alg !== "HS256") throw bad('"secret_from_public_jwk" goes with "alg": "HS256"');
    const jwk = keys.public.get(spec.secret_from_public_jwk);
    if (!jwk) throw bad(`no public key "${spec.secret_from_public_jwk}" in jwks.json`);
    // By hand, always: the secret is the public key's JSON text.
    const secret = Buffer.from(JSON.stringify(jwk), "utf8");
    const kid = spec.kid ?? spec.secret_from_public_jwk;
    return { alg: "HS256", header: { alg: "HS256", kid, typ: "JWT" }, sign: hmacSigner(secret) };
  }

  if (spec.secret !== undefined) {
    if (spec.alg !== undefined && spec.alg !== "HS256") throw bad('"secret" goes with "alg": "HS256"');
    if (typeof spec.secret !== "string") throw bad('"secret" must be a string');
    const secret = Buffer.from(spec.secret, "utf8");
    const header = spec.kid === undefined ? { alg: "HS256", typ: "JWT" } : { alg: "HS256", kid: spec.kid, typ: "JWT" };
    // WebCrypto (under jose) refuses an empty HMAC key; node:crypto does not.
    const jose = secret.length > 0 ? async () => new Uint8Array(secret) : undefined;
    return { alg: "HS256", header, sign: hmacSigner(secret), jose };
  }

  if (spec.alg === "HS256") throw bad('"alg": "HS256" needs "secret" or "secret_from_public_jwk"');
  if (spec.kid === undefined) throw bad('"kid" is required (one of the keys in private.json)');
  const jwk = keys.private.get(spec.kid);
  if (!jwk) throw bad(`no private key "${spec.kid}" in private.json`);
  const alg = spec.alg ?? jwk.alg;
  if (!ASYMMETRIC.has(alg)) throw bad(`unsupported "alg": ${JSON.stringify(alg)}`);
  if (alg !== jwk.alg) throw bad(`key "${spec.kid}" is ${jwk.alg}, not ${alg}`);
  return {
    alg,
    header: { alg, kid: spec.kid, typ: "JWT" },
    sign: nodeSigner(alg, jwk),
    jose: () => importJWK(jwk, alg),
  };
}

function hmacSigner(secret) {
  return (data) => createHmac("sha256", secret).update(data).digest();
}

function nodeSigner(alg, jwk) {
  const { kid, alg: _alg, use, key_ops, ...material } = jwk;
  const key = createPrivateKey({ key: material, format: "jwk" });
  if (alg === "EdDSA") return (data) => cryptoSign(null, data, key);
  if (alg === "ES256") return (data) => cryptoSign("sha256", data, { key, dsaEncoding: "ieee-p1363" });
  return (data) => cryptoSign("sha256", data, key); // RS256: PKCS#1 v1.5 is the default padding
}

// The default header with the spec's fields added or overriding in place
// (a null value removes the field).
function withOverrides(header, overrides = {}) {
  const out = { ...header };
  for (const [name, value] of Object.entries(overrides)) {
    if (value === null) delete out[name];
    else out[name] = value;
  }
  return out;
}

// A compact JWS from the exact header and payload texts.
function byHand(headerText, payloadText, sign) {
  const input = `${b64u(headerText)}.${b64u(payloadText)}`;
  return `${input}.${sign(Buffer.from(input, "ascii")).toString("base64url")}`;
}

const USAGE = "usage: node tests/jwt/mint.mjs keys <dir>\n       node tests/jwt/mint.mjs sign <dir> < specs.json";

async function main(argv) {
  const [command, dir, ...rest] = argv;
  if (!dir || rest.length > 0 || !["keys", "sign"].includes(command)) {
    console.error(USAGE);
    process.exit(2);
  }
  if (command === "keys") await makeKeys(dir);
  else await signAll(dir);
}

main(process.argv.slice(2)).catch((err) => {
  console.error(`mint.mjs: ${err instanceof InputError ? err.message : err.stack || err}`);
  process.exit(1);
});
