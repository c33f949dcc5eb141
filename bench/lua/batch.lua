-- Scenario M: batches of completed usage items of 1 credit, each with a fresh key: most items for one of
-- many users, a few for one of the hot ones (data.batch_hot_share of them), as a generation service sends.
dofile("bench/lua/common.lua")

local item = '{"user_id":"%s","type":"usage","amount":"0","credits":-1,' ..
             '"description":"Image generation (1024x1024)","idempotency_key":"%s"}'

function request()
  local items = {}
  for i = 1, data.batch_size do
    local users = math.random() < data.batch_hot_share and data.batch_hot or data.batch_users
    items[i] = string.format(item, users[math.random(#users)], fresh_key("batch"))
  end
  return wrk.format("POST", "/api/transactions/batch", {
    ["Authorization"] = "Bearer " .. data.generation_token,
    ["Content-Type"] = "application/json",
  }, '{"items":[' .. table.concat(items, ",") .. ']}')
end
