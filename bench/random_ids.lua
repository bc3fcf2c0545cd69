-- wrk script: GET <prefix><random connection id><suffix>, with a random API key per request.
--   wrk ... -s bench/random_ids.lua URL -- <ids file> <path prefix> <path suffix> [<keys file> <header name>]
-- The ids file holds one connection id per line; the keys file one header value per line
-- (e.g. "Bearer dk_…"). A path without "{id}" work (prefix only, empty ids file) is allowed.
-- done() prints one JSON line (prefix BENCH_JSON) that bench/token_bench.py parses.

local ids, keys = {}, {}
local prefix, suffix, key_header = "/", "", nil

local function read_lines(path, into)
  for line in io.lines(path) do
    if #line > 0 then into[#into + 1] = line end
  end
end

function init(args)
  if args[1] ~= "-" then read_lines(args[1], ids) end
  prefix, suffix = args[2], args[3] or ""
  if args[4] and args[4] ~= "-" then
    read_lines(args[4], keys)
    key_header = args[5]
  end
  -- Each wrk thread has its own Lua state: seed each differently.
  math.randomseed(os.time() + tonumber(tostring(ids):match("0x(%x+)") or "0", 16) % 100000)
end

function request()
  if key_header then wrk.headers[key_header] = keys[math.random(#keys)] end
  local path = prefix
  if #ids > 0 then path = prefix .. ids[math.random(#ids)] .. suffix end
  return wrk.format("GET", path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
