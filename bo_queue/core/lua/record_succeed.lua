-- include: transition.lua
-- KEYS: record, result (Celery's backend key of the task). ARGV: ns, id, now, ttl, the
-- result as Celery's backend encodes it, its retention (s; 0: none), then the record's
-- field/value pairs.
-- A successful run's whole ending, in one call: the result stored and published on its
-- channel as Celery's Redis backend does (SETEX + PUBLISH; not over a success already
-- stored, as Celery's _store_result), then the record SUCCEEDED (transition.lua), its
-- run kept, its event announced, its dependents settled.
-- -> reply(1 moved | 0 not) (settle.lua)
local stored = redis.call('GET', KEYS[2])
local ok, meta = pcall(cjson.decode, stored or '')
if not (ok and type(meta) == 'table' and meta.status == 'SUCCESS') then
  local expires = tonumber(ARGV[6])
  if expires > 0 then
    redis.call('SETEX', KEYS[2], expires, ARGV[5])
  else
    redis.call('SET', KEYS[2], ARGV[5])
  end
  redis.call('PUBLISH', KEYS[2], ARGV[5])
end
local fields = {}
for i = 7, #ARGV do table.insert(fields, ARGV[i]) end
return reply(transition(ARGV[1], ARGV[2], KEYS[1], 'SUCCEEDED', tonumber(ARGV[3]),
                        tonumber(ARGV[4]), fields))
