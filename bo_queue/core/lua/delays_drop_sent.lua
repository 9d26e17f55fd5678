-- KEYS: delayed zset, specs hash. ARGV: id, the spec that was sent. Drops the entry only
-- if it still holds that spec: the task may have been held again meanwhile (a worker
-- that took it could not admit it yet), and that newer hold must stay.
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 1
