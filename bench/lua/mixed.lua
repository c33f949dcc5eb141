-- Scenario E: 80% history reads (each user with their own token), 15% usage, 5% purchases, across many users.
dofile("bench/lua/common.lua")

function request()
  local user = data.users[math.random(#data.users)]
  local draw = math.random()
  if draw < 0.80 then
    return wrk.format("GET", "/api/transactions?limit=20", {["Authorization"] = "Bearer " .. user.token})
  elseif draw < 0.95 then
    return post(data.generation_token, fresh_key("usage"), string.format(usage_body, user.id))
  end
  return post(data.payment_token, fresh_key("purchase"), string.format(purchase_body, user.id))
end
