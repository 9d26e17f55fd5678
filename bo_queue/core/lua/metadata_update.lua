-- include: keys.lua
-- metadata_update (bo_queue.monitor.metadata): merge keys into the namespace's metadata.
-- KEYS: none (the hash is K.metadata(ns)).
-- ARGV: ns, now (ISO 8601 UTC), limit (bytes), the prefix of the fields that hold keys,
--       then field, JSON value pairs (fields are the prefix and a key).
-- Reply: {1} when merged; {0, size} when the merged metadata would be `size` bytes, over
--        `limit`: then nothing is written. `initialized_at` is set the first time only,
--        `last_updated` on every merge.
local ns, now, limit, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local key = K.metadata(ns)
local size = 0
local new = {}
for i = 5, #ARGV - 1, 2 do new[ARGV[i]] = ARGV[i + 1] end
local current = redis.call('HGETALL', key)
for i = 1, #current - 1, 2 do
  local field = current[i]
  if string.sub(field, 1, #prefix) == prefix and new[field] == nil then
    size = size + #field - #prefix + #current[i + 1]
  end
end
for field, value in pairs(new) do size = size + #field - #prefix + #value end
if size > limit then return {0, size} end
redis.call('HSETNX', key, 'initialized_at', now)
redis.call('HSET', key, 'last_updated', now)
-- one pair at a time: unpack() of thousands of keys would pass Lua's stack limit
for field, value in pairs(new) do redis.call('HSET', key, field, value) end
return {1}
