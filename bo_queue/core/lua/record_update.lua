-- include: keys.lua
-- KEYS: record. ARGV: ns, id, n, n field/value pairs of the record, m, m triples (a hash
-- that keeps the task's message, the message read, the message to write), then the
-- broker list the task's message was read in, the list it moves to, the message read
-- there and the one to push ('' for none).
-- -> {'updated'} | {'gone'} | {'started', state} | {'retry'}: a kept message changed
--    since it was read (sent, held, released): read again. Nothing is written then.
-- bq.update of a task that has not started: the record's fields and, for a new
-- priority, every kept copy of its message and its place in the broker's priority lists.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'gone'} end
if state ~= 'PENDING' and state ~= 'QUEUED' and state ~= 'PAUSED' then
  return {'started', state}
end
local id = ARGV[2]
local n = tonumber(ARGV[3])
local at = 4 + 2 * n
local m = tonumber(ARGV[at])
for i = at + 1, at + 3 * m, 3 do
  if redis.call('HGET', ARGV[i], id) ~= ARGV[i + 1] then return {'retry'} end
end
for i = at + 1, at + 3 * m, 3 do redis.call('HSET', ARGV[i], id, ARGV[i + 2]) end
local from, to, old, new = ARGV[at + 3 * m + 1], ARGV[at + 3 * m + 2],
                           ARGV[at + 3 * m + 3], ARGV[at + 3 * m + 4]
if old ~= '' and redis.call('LREM', from, 1, old) == 1 then
  redis.call('LPUSH', to, new)  -- kombu pushes left, pops right: last in its new line
end  -- else a worker took it meanwhile: it runs (or is held back) as it was sent
for i = 4, 3 + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return {'updated'}
