-- include: study_event.lua
-- KEYS: meta hash, events stream. ARGV: new status, message, now, study id, then the
-- statuses it may come from. A change is announced on the stream (bo_queue.core.events).
-- -> the new status | the current one, if the change may not come from it | nil (no study)
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
for i = 5, #ARGV do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], 'message', ARGV[2], 'updated_at', ARGV[3])
    study_event(KEYS[2], ARGV[4], ARGV[1], ARGV[2], tonumber(ARGV[3]))
    return ARGV[1]
  end
end
return current
