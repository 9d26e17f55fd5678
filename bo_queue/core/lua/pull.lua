-- include: settle.lua
-- Shared by the pull scripts (bo_queue.agents), after set_state and settle.
-- ARGV[1..3] of every script: namespace, now, record retention (s). Each replies
-- reply(json of `out`, a message or nil) (settle.lua).
local ns, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local TASKS, MESSAGES = K.pull_tasks(ns), K.pull_messages(ns)
local LEASES, LATER = K.pull_leases(ns), K.pull_later(ns)
local out = {revoked = {}}

local function meta_of(id)
  local raw = redis.call('HGET', TASKS, id)
  if raw then return cjson.decode(raw) end
  return nil
end
local function state_of(id) return redis.call('HGET', K.task(ns, id), 'state') end
local function cancel_reason(id) return redis.call('GET', K.cancelled(ns, id)) end
local function agent_tasks(agent) return K.agent_tasks(ns, agent) end
local function touch(agent) redis.call('ZADD', K.agents(ns), now, agent) end

-- The task leaves pull mode: no entry, message, lease or holder left.
local function forget(id, meta)
  redis.call('HDEL', TASKS, id)
  redis.call('HDEL', MESSAGES, id)
  redis.call('ZREM', LEASES, id)
  redis.call('ZREM', LATER, id)
  if meta and meta.agent then redis.call('SREM', agent_tasks(meta.agent), id) end
end
-- A task found ended (cancelled while it waited) or gone: drop it; its record counts
-- its retention again (it waited without one).
local function drop(id, meta, state)
  forget(id, meta)
  if state then redis.call('EXPIRE', K.task(ns, id), ttl) end
end
-- End a task: its state, its retention, its dependents (as a worker's transition does).
local function finish(id, meta, state, fields)
  forget(id, meta)
  set_state(ns, id, state, now, fields)
  redis.call('EXPIRE', K.task(ns, id), ttl)
  settle(ns, id, state, now, ttl)
end
-- End a task that has no result (the caller stores one: mark_as_revoked).
local function revoke(id, meta, state, reason)
  local fields = {'finished_at', ARGV[2]}
  if state == 'CANCELLED' then fields = {'finished_at', ARGV[2], 'error', reason} end
  finish(id, meta, state, fields)
  table.insert(out.revoked, {id, reason})
end
-- Put a task (back) where agents claim it, in its old place.
local function make_ready(id, meta)
  meta.agent, meta.lease_s, meta.finishing = nil, nil, nil
  redis.call('HSET', TASKS, id, cjson.encode(meta))
  redis.call('ZADD', K.pull_ready(ns, meta.type), meta.rank, id)
  if state_of(id) == 'PENDING' then set_state(ns, id, 'QUEUED', now) end
  redis.call('PERSIST', K.task(ns, id))  -- it waits for an agent as long as it takes
end
-- Take a held task from its agent: back to the queue, or CANCELLED if it was cancelled.
local function unhold(id, meta, fields)
  local reason = cancel_reason(id)
  if reason then
    revoke(id, meta, 'CANCELLED', reason)
    return 'CANCELLED'
  end
  redis.call('ZREM', LEASES, id)
  redis.call('SREM', agent_tasks(meta.agent), id)
  set_state(ns, id, 'QUEUED', now, fields)
  make_ready(id, meta)
  return 'QUEUED'
end
-- Release leases that ran out, and move tasks that became due to their type's queue.
local function maintain(limit)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', ARGV[2], 'LIMIT', 0, limit)) do
    n = n + 1
    local meta, state = meta_of(id), state_of(id)
    if not meta or not meta.agent or state ~= 'RUNNING' then
      forget(id, meta)  -- ended some other way
    else
      redis.call('HINCRBY', K.task(ns, id), 'lost', 1)
      unhold(id, meta, {'error', 'the lease of agent ' .. meta.agent .. ' ran out'})
    end
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', LATER, '-inf', ARGV[2], 'LIMIT', 0, limit)) do
    n = n + 1
    redis.call('ZREM', LATER, id)
    local meta, state = meta_of(id), state_of(id)
    if meta and state and not is_terminal(state) then make_ready(id, meta)
    else drop(id, meta, state) end
  end
  return n
end
-- Whether `agent` holds `id`: (meta, state) if so, else (nil, state, holder).
local function held_by(id, agent)
  local meta, state = meta_of(id), state_of(id)
  if meta and meta.agent == agent and state == 'RUNNING' then return meta, state end
  return nil, state, meta and meta.agent
end
local function refusal(id, state, holder)
  out.verdict, out.state, out.holder = 'not_held', state or false, holder or false
  if state then out.error = redis.call('HGET', K.task(ns, id), 'error') or false end
  return reply(cjson.encode(out))
end
-- What release, cancel and complete/fail check first (after the leases that ran out, up
-- to `batch`): `agent` holds `id` and nobody is finishing it. Its meta if so, else
-- (nil, the reply that refuses).
local function holding(id, agent, batch)
  touch(agent)
  maintain(batch)
  local meta, state, holder = held_by(id, agent)
  if not meta then return nil, refusal(id, state, holder) end
  if meta.finishing and meta.finishing > now then
    out.verdict = 'finishing'
    return nil, reply(cjson.encode(out))
  end
  return meta
end
