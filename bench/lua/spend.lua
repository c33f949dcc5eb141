-- Scenarios A and H: completed usage of 1 credit for one of the spenders, each with a fresh Idempotency-Key.
dofile("bench/lua/common.lua")

function request()
  local user = spenders[math.random(#spenders)]
  return post(data.generation_token, fresh_key("spend"), string.format(usage_body, user))
end
