-- KEYS: trials hash, reported hash, inbox. ARGV: index, canonical values JSON, entry JSON.
-- -> 'new' | 'same' | 'missing' | 'conflict' | 'closed:<status>'
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 'missing' end
local before = redis.call('HGET', KEYS[2], ARGV[1])
if before then
  if before == ARGV[2] then return 'same' end
  return 'conflict'
end
local status = cjson.decode(raw)['status']
if status ~= 'RUNNING' then return 'closed:' .. status end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 'new'
