-- wrk script for the gateway's health endpoints: alternates /healthz and
-- /readyz on every connection (or requests the paths given after "--"),
-- counts non-200 answers, which wrk itself only reports for 4xx/5xx in
-- aggregate, and prints the latency percentiles.
--
--   wrk -t2 -c64 -d10s -s bench/wrk/health.lua http://127.0.0.1:8080
--   wrk -t2 -c64 -d10s -s bench/wrk/health.lua http://127.0.0.1:8080 -- /healthz
local paths = { "/healthz", "/readyz" }
local n = 0
bad = 0 -- global: done() reads it from every thread with thread:get
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  if #args > 0 then
    paths = args
  end
end

request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1])
end

response = function(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
  end
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d, errors (connect %d, read %d, write %d, status %d, timeout %d)\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
  local nbad = 0
  for _, t in ipairs(threads) do
    nbad = nbad + t:get("bad")
  end
  io.write(string.format("non-200 answers %d\n", nbad))
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("latency p%g: %.3f ms\n", p, latency:percentile(p) / 1000))
  end
end
