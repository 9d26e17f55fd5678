-- KEYS: holders (zset holder -> lease expiry), needs (hash holder -> "n1,n2,...").
-- ARGV: now, expiry, holder, n, capacity 1..n, need 1..n. -> 1 admitted | 0 full
local now, n = tonumber(ARGV[1]), tonumber(ARGV[4])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], gone)
  redis.call('HDEL', KEYS[2], gone)
end
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
local used = {}
for i = 1, n do used[i] = 0 end
for _, held in ipairs(redis.call('HVALS', KEYS[2])) do
  local i = 1
  for amount in string.gmatch(held, '[^,]+') do
    used[i] = used[i] + tonumber(amount)
    i = i + 1
  end
end
local needs = {}
for i = 1, n do
  needs[i] = ARGV[4 + n + i]
  if used[i] + tonumber(needs[i]) > tonumber(ARGV[4 + i]) + 1e-9 then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], table.concat(needs, ','))
return 1
