-- wrk script: post messages to conversations through the REST API.
--
-- route: POST /api/v1/conversations/{id}/messages
--
--   WRK_API_KEY=$(cat key) wrk -t2 -c16 -d10s -s bench/wrk/post.lua \
--       http://127.0.0.1:8080 -- $(cat conversations.txt)
--
-- The arguments after "--" are conversation ids (bench/wrk/rest.sh opens
-- them with "unigate-bench open"); requests go round robin over them, so
-- that no conversation has more than a few messages waiting for their
-- durable write (history.max_pending_per_conversation, 64: more get 503).
-- Each message is {"text": <WRK_TEXT_BYTES characters, default 64>,
-- "sender": "bot", "client_msg_id": unique per run, thread and request}:
-- a new message, never a duplicate. Counts 201 (stored), 200 (duplicate)
-- and every other status, and prints the percentiles.
local key = os.getenv("WRK_API_KEY")
local size = tonumber(os.getenv("WRK_TEXT_BYTES") or "64")
local convs = {}
local n = 0
local headers = {}
local text
-- globals, read by done() from every thread with thread:get
created, duplicates, other, tid, run = 0, 0, 0, 0, 0
first_other = ""
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
  thread:set("run", os.time())
end

init = function(args)
  if key == nil or key == "" then
    error("set WRK_API_KEY to an API key with the write scope")
  end
  if #args == 0 then
    error("give conversation ids after --")
  end
  convs = args
  headers["Authorization"] = "Bearer " .. key
  headers["Content-Type"] = "application/json"
  text = string.rep("m", size)
end

request = function()
  n = n + 1
  local conv = convs[(n % #convs) + 1]
  local body = string.format('{"text":"%s","sender":"bot","client_msg_id":"wrk-%d-%d-%d"}', text, run, tid, n)
  return wrk.format("POST", "/api/v1/conversations/" .. conv .. "/messages", headers, body)
end

response = function(status, hdrs, body)
  if status == 201 then
    created = created + 1
  elseif status == 200 then
    duplicates = duplicates + 1
  else
    other = other + 1
    if first_other == "" then
      first_other = status .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

done = function(summary, latency, requests)
  local c, d, o, sample = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    d = d + t:get("duplicates")
    o = o + t:get("other")
    if sample == "" then
      sample = t:get("first_other")
    end
  end
  io.write(string.format("requests %d, errors (connect %d, read %d, write %d, status %d, timeout %d)\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
  io.write(string.format("created (201) %d, duplicate (200) %d, other %d\n", c, d, o))
  if o > 0 then
    io.write("first other answer: " .. sample .. "\n")
  end
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("latency p%g: %.3f ms\n", p, latency:percentile(p) / 1000))
  end
end
