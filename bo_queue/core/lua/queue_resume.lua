-- include: keys.lua, terminal.lua
-- ARGV: ns, queue, now, ttl. -> how many held messages were scheduled to be sent now.
-- bq.resume_queue: workers start the queue's tasks again, and what they held back while
-- it was paused (record_start.lua) goes to the held-send schedule, due now, from where
-- the caller (or any worker, under a lease) sends it. The message of a task that ended
-- (cancelled) or was deleted meanwhile is dropped.
local ns, queue, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('SREM', K.paused_queues(ns), queue)
local key = K.queue_held(ns, queue)
local held = redis.call('HGETALL', key)
local sent = 0
for i = 1, #held - 1, 2 do
  local id, message = held[i], held[i + 1]
  local state = redis.call('HGET', K.task(ns, id), 'state')
  if state and not is_terminal(state) then  -- (held records never expire: none is deleted)
    redis.call('HSET', K.delayed_specs(ns), id, message)
    redis.call('ZADD', K.delayed(ns), now, id)
    if state ~= 'PAUSED' then redis.call('EXPIRE', K.task(ns, id), ttl) end
    sent = sent + 1
  end
end
redis.call('DEL', key)
return sent
