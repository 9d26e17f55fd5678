-- KEYS: delayed zset, specs hash. ARGV: now, limit, lease_s. Re-scores what it claims.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], id)
  local spec = redis.call('HGET', KEYS[2], id)
  if spec then
    table.insert(out, id)
    table.insert(out, spec)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
