-- include: settle.lua, runs.lua
-- KEYS: record, cancel flag. ARGV: ns, worker, now, ttl, id, handler, queue, priority,
-- lost runs allowed, handler version ('' for none), a token for this run ('' for none),
-- the task's message to hold back ('' or absent: none given).
-- -> reply("cancelled" | "done" | "run", attempts | "lost", lost runs | "hold" | "held")
-- (settle.lua). "hold": the task must not start now (it is PAUSED, waits on a dependency
-- added later, or its queue is paused): call again with its message, which is then kept
-- in Redis ("held") where bq.resume, the dependencies' release or bq.resume_queue send
-- it again, or started after all ("run") if that changed meanwhile.
-- A record still RUNNING when a worker starts the task again means the run before was
-- lost with its worker (or its Redis connection): counted, so that a poison task that
-- kills every worker process running it fails after its retry budget instead of looping.
-- A message with no record (sent with plain Celery send_task, or older than its record)
-- still runs, and gets a record from what the message says.
local ns, now, ttl = ARGV[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'id', ARGV[5], 'handler', ARGV[6], 'queue', ARGV[7],
             'priority', ARGV[8], 'created_at', ARGV[3], 'tags', '[]')
  set_state(ns, ARGV[5], 'QUEUED', now)
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if not is_terminal(state) then
    set_state(ns, ARGV[5], 'CANCELLED', now, {'finished_at', ARGV[3]})
    redis.call('EXPIRE', KEYS[1], ttl)
    settle(ns, ARGV[5], 'CANCELLED', now, ttl)
    return reply('cancelled')
  end
  return reply('cancelled')
end
if is_terminal(state) then return reply('done') end
local base = string.match(ARGV[7], '^[^.]+') or ARGV[7]  -- default.gpu is default's
local hold = nil
if state == 'PAUSED' then
  hold = K.paused(ns)
elseif state == 'PENDING' and redis.call('SCARD', K.waiting(ns, ARGV[5])) > 0 then
  hold = K.parked(ns)  -- where a dependent waits; its release sends it (dependencies.lua)
elseif redis.call('SISMEMBER', K.paused_queues(ns), base) == 1 then
  hold = K.queue_held(ns, base)
end
if hold then
  if (ARGV[12] or '') == '' then return reply('hold') end
  redis.call('HSET', hold, ARGV[5], ARGV[12])
  if state == 'RUNNING' or state == 'RETRYING' then set_state(ns, ARGV[5], 'QUEUED', now) end
  redis.call('PERSIST', KEYS[1])  -- kept while held: resuming counts its retention again
  return reply('held')
end
if state == 'RUNNING' then
  if ARGV[11] ~= '' and redis.call('HGET', KEYS[1], 'run') == ARGV[11] then
    -- this very start, again: its reply was lost and the client retried it
    return reply('run', tonumber(redis.call('HGET', KEYS[1], 'attempts') or '1'))
  end
  local lost = redis.call('HINCRBY', KEYS[1], 'lost', 1)
  if lost > tonumber(ARGV[9]) then return reply('lost', lost) end
  end_run(ns, ARGV[5], 'LOST', now, ttl, {'error', 'lost with its worker'})
end
redis.call('HDEL', KEYS[1], 'next_attempt_at')
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
set_state(ns, ARGV[5], 'RUNNING', now, {'started_at', ARGV[3], 'worker', ARGV[2]})
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'version', ARGV[10]) end
if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'run', ARGV[11]) end
redis.call('EXPIRE', KEYS[1], ttl)
return reply('run', attempts)
