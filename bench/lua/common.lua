-- Shared by the write scripts: the run's data (users, tokens) and idempotency keys that are never reused.
dofile("bench/lua/report.lua")
data = dofile(os.getenv("BENCH_DATA"))

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

-- bench/run.py names each wrk invocation (after "--"), so keys differ across invocations too.
local invocation, sent = "wrk", 0
function fresh_key(prefix)
  sent = sent + 1
  return string.format("%s-%s-%s-%d-%d", data.run, invocation, prefix, thread_number, sent)
end

-- The second argument names the list of users spend.lua spends for (scenario H's), "spenders" by default.
function init(args)
  invocation = args[1] or invocation
  local list = args[2] or "spenders"
  spenders = assert(data[list], "no list " .. list .. " in the data file")
  math.randomseed(os.time() * 1000 + thread_number)
end

usage_body = '{"user_id":"%s","type":"usage","amount":"0","credits":-1,' ..
             '"description":"Image generation (1024x1024)","status":"completed"}'
purchase_body = '{"user_id":"%s","type":"purchase","amount":"9.99","credits":500,' ..
                '"description":"Starter pack: 500 credits","status":"completed"}'

function post(token, key, body)
  return wrk.format("POST", "/api/transactions", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = key,
  }, body)
end
