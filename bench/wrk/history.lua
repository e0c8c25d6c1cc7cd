-- wrk script: read conversations' history through the REST API, page by
-- page.
--
-- route: GET /api/v1/conversations/{id}/messages
--
--   WRK_API_KEY=$(cat key) WRK_PAGE=100 wrk -t2 -c16 -d10s \
--       -s bench/wrk/history.lua http://127.0.0.1:8080 -- $(cat conversations.txt)
--
-- Each thread walks the conversations given after "--" in turn: the first
-- page (after=0, limit=WRK_PAGE, default 100), then, while the answer
-- has a next_after, the page after it; a walk that ends starts the next
-- conversation. (wrk does not say which connection a response came from,
-- so the cursors of a thread's walks are kept in one queue: every request
-- continues some walk, or starts one.) Counts pages, messages and non-200
-- answers, and prints the percentiles. Post first (post.lua) so there is
-- a history to read.
local key = os.getenv("WRK_API_KEY")
local page = tonumber(os.getenv("WRK_PAGE") or "100")
local convs = {}
local headers = {}
local next_conv = 0
local pending = {} -- {conv, after} of walks to continue
-- globals, read by done() from every thread with thread:get
pages, messages, walks, other = 0, 0, 0, 0
first_other = ""
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  if key == nil or key == "" then
    error("set WRK_API_KEY to an API key with the read scope")
  end
  if #args == 0 then
    error("give conversation ids after --")
  end
  convs = args
  headers["Authorization"] = "Bearer " .. key
end

local function path(conv, after)
  return string.format("/api/v1/conversations/%s/messages?after=%d&limit=%d", conv, after, page)
end

request = function()
  local w = table.remove(pending)
  if w == nil then
    next_conv = next_conv + 1
    walks = walks + 1
    w = { convs[(next_conv % #convs) + 1], 0 }
  end
  return wrk.format("GET", path(w[1], w[2]), headers)
end

response = function(status, hdrs, body)
  if status ~= 200 then
    other = other + 1
    if first_other == "" then
      first_other = status .. " " .. string.sub(body or "", 1, 200)
    end
    return
  end
  pages = pages + 1
  local _, count = string.gsub(body, '"seq":', "")
  messages = messages + count
  local after = string.match(body, '"next_after":(%d+)')
  if after ~= nil then
    local conv = string.match(body, '"conversation_id":"([^"]+)"')
    table.insert(pending, { conv, tonumber(after) })
  end
end

done = function(summary, latency, requests)
  local p, m, w, o, sample = 0, 0, 0, 0, ""
  for _, t in ipairs(threads) do
    p = p + t:get("pages")
    m = m + t:get("messages")
    w = w + t:get("walks")
    o = o + t:get("other")
    if sample == "" then
      sample = t:get("first_other")
    end
  end
  io.write(string.format("requests %d, errors (connect %d, read %d, write %d, status %d, timeout %d)\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout))
  io.write(string.format("pages (200) %d, messages read %d (%.0f/s), walks started %d, other %d\n",
    p, m, m / (summary.duration / 1e6), w, o))
  if o > 0 then
    io.write("first other answer: " .. sample .. "\n")
  end
  for _, q in ipairs({ 50, 90, 99, 99.9 }) do
    io.write(string.format("latency p%g: %.3f ms\n", q, latency:percentile(q) / 1000))
  end
end
