-- Library: the server's clock, in milliseconds (expiry is judged by it, never a worker's).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
