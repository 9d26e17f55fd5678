-- KEYS: handlers hash. ARGV: name, entry JSON -> 'ok' | the entry of a handler workers serve
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old and not cjson.decode(old)['pull'] then return old end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
