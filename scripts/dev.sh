#!/usr/bin/env bash
# `make dev`: a demo origin, keyward on wrangler dev (local KV and Durable
# Objects, state kept in .wrangler/state across runs), a demo org, user and
# secret key, and a ready-to-paste curl line.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-8787}
ORIGIN_PORT=${ORIGIN_PORT:-8788}
PAGE_PORT=${PAGE_PORT:-8789}
WRANGLER=node_modules/.bin/wrangler

# .dev.vars: created with random secrets once; values already there win.
touch .dev.vars
chmod 600 .dev.vars
add_default() { grep -q "^$1=" .dev.vars || echo "$1=$2" >> .dev.vars; }
add_default ADMIN_TOKEN "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
add_default ORIGIN_SIGNING_SECRET "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
value() { grep "^$1=" .dev.vars | tail -n1 | cut -d= -f2- | sed -e 's/^"//' -e 's/"$//'; }
ADMIN_TOKEN=$(value ADMIN_TOKEN)
ORIGIN_URL=$(value ORIGIN_URL || true)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

jwt_vars=()
if [ -z "$ORIGIN_URL" ]; then
  ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT"
  PORT=$ORIGIN_PORT node demo/origin.mjs & pids+=($!)
  # The demo origin is also the identity provider of JWT sessions (README,
  # JWT sessions); values in .dev.vars win.
  grep -q '^JWT_ISSUER=' .dev.vars || jwt_vars=(--var "JWT_ISSUER:https://idp.keyward.test"
    --var "JWT_AUDIENCE:keyward-demo" --var "JWT_JWKS_URL:$ORIGIN_URL/.well-known/jwks.json")
fi

# The widget demo page, on its own origin.
PORTS=$PAGE_PORT node demo/page.mjs & pids+=($!)

mkdir -p .wrangler
"$WRANGLER" dev --port "$PORT" --ip 127.0.0.1 --inspector-port 0 \
  --show-interactive-dev-session=false --var "ORIGIN_URL:$ORIGIN_URL" "${jwt_vars[@]}" & pids+=($!)

base="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
  curl -s -o /dev/null "$base/" && break
  sleep 0.2
done

admin() { curl -sS -X "$1" "$base$2" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' ${3:+-d "$3"}; }
field() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s);const r=process.argv[1].split(".").reduce((o,k)=>o&&o[k],v);if(r===undefined){console.error(s);process.exit(1)}console.log(r)})' "$1"; }

# The public suffix list (widget keys' wildcard origins are checked against it).
curl -sS -X PUT "$base/admin/public_suffix_list" -H "Authorization: Bearer $ADMIN_TOKEN" \
  -H 'content-type: text/plain' --data-binary @data/public_suffix_list.dat > /dev/null
admin PUT /admin/orgs/org_demo '{"name":"Demo Org","baa_active":true}' > /dev/null
admin PUT /admin/orgs/org_demo/users/user_demo '{"role":"admin"}' > /dev/null
admin PUT /admin/orgs/org_demo/users/user_viewer '{"role":"viewer"}' > /dev/null
# A fresh demo key each run; the previous one is revoked (keyward never
# stores a plaintext key, not even for the demo).
if [ -f .wrangler/demo-key-id ]; then
  admin DELETE "/admin/orgs/org_demo/api_keys/$(cat .wrangler/demo-key-id)" > /dev/null || true
fi
created=$(admin POST /admin/orgs/org_demo/api_keys '{"name":"demo","scopes":["ai:*","control:read"],"user_id":"user_demo"}')
KEY=$(echo "$created" | field data.plaintext)
echo "$created" | field data.id > .wrangler/demo-key-id
# A public widget key for the demo page's origin.
if [ -f .wrangler/demo-widget-key-id ]; then
  admin DELETE "/admin/orgs/org_demo/api_keys/$(cat .wrangler/demo-widget-key-id)" > /dev/null || true
fi
widget=$(admin POST /admin/orgs/org_demo/api_keys "{\"name\":\"demo widget\",\"kind\":\"widget\",\"scopes\":[\"ai:chat\"],\"resource_id\":\"bot_demo\",\"allowed_origins\":[\"http://127.0.0.1:$PAGE_PORT\",\"http://localhost:$PAGE_PORT\"]}")
WIDGET_KEY=$(echo "$widget" | field data.plaintext)
echo "$widget" | field data.id > .wrangler/demo-widget-key-id
# A leased secret key: admitted from leases, no storage read per request.
if [ -f .wrangler/demo-leased-key-id ]; then
  admin DELETE "/admin/orgs/org_demo/api_keys/$(cat .wrangler/demo-leased-key-id)" > /dev/null || true
fi
leased=$(admin POST /admin/orgs/org_demo/api_keys '{"name":"demo leased","scopes":["ai:*"],"consistency":"leased"}')
LEASED_KEY=$(echo "$leased" | field data.plaintext)
LEASED_ID=$(echo "$leased" | field data.id)
echo "$LEASED_ID" > .wrangler/demo-leased-key-id

cat <<MSG

  keyward is running on $base  (origin: $ORIGIN_URL)

  keys console: $base/console/
    sign in as admin@demo.test / demo-admin (admin) or viewer@demo.test / demo-viewer (viewer)
  demo org: org_demo (BAA active), user: user_demo (admin)
  demo secret key (shown once): $KEY

  curl -sS -X POST $base/v1/ai/chat \\
    -H "Authorization: Bearer $KEY" \\
    -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hello"}]}'

  widget demo page (public widget key, allowed only from this origin):
    http://127.0.0.1:$PAGE_PORT/?edge=$base&key=$WIDGET_KEY

  a leased key (consistency "leased"; shown once): $LEASED_KEY
  after a few requests with it, its guard's counters (lease requests vs requests):
    curl -sS $base/admin/orgs/org_demo/api_keys/$LEASED_ID/guard -H "Authorization: Bearer \$ADMIN_TOKEN"

  JWT sessions: the demo origin is the identity provider (README, JWT sessions):
    curl -sS -X POST $base/api/v1/auth/login -H 'content-type: application/json' \\
      -d '{"email":"viewer@demo.test","password":"demo-viewer"}'
  then call with  -H "Authorization: Bearer <access_token>"

  admin token: see .dev.vars. Ctrl-C stops everything; state stays in .wrangler/state.

MSG
wait "${pids[-1]}"
