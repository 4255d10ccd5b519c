-- wrk script of `make bench`: POST /v1/ai/chat with a small JSON body.
--   BENCH_KEYS_FILE  one Authorization value per line; requests rotate
--                    through them (a one-line file: a single hot key).
--   BENCH_COUNT_STATUS=1  also count the responses by status (the I/O
--                    counting runs only: a response() function makes wrk
--                    parse every response, so the timed runs never set it)
-- Every scenario goes through the same request() path, so the load
-- generator's own cost is the same for all of them. done() prints one
-- machine-readable line (latencies in microseconds), and with
-- BENCH_COUNT_STATUS=1 a second one with the count of each status.

local body = '{"model":"bench","messages":[{"role":"user","content":"hello"}]}'
local requests_ = {}
local n = 0
local i = 0

function init(args)
  local file = os.getenv("BENCH_KEYS_FILE")
  for line in io.lines(file) do
    if line ~= "" then
      local headers = { ["Content-Type"] = "application/json", ["Authorization"] = line }
      n = n + 1
      requests_[n] = wrk.format("POST", "/v1/ai/chat", headers, body)
    end
  end
  assert(n > 0, "no Authorization values in " .. tostring(file))
end

function request()
  i = i % n + 1
  return requests_[i]
end

local counting = os.getenv("BENCH_COUNT_STATUS") == "1"
local threads = {}
if counting then
  statuses = {}
  function setup(thread)
    table.insert(threads, thread)
  end
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
  if counting then
    local total = {}
    for _, t in ipairs(threads) do
      for code, n in pairs(t:get("statuses") or {}) do
        total[code] = (total[code] or 0) + n
      end
    end
    local parts = {}
    for code, n in pairs(total) do
      parts[#parts + 1] = string.format('"%d":%d', code, n)
    end
    io.write("WRK_STATUS {" .. table.concat(parts, ",") .. "}\n")
  end
end
