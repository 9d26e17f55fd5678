-- include: pull.lua
-- ARGV: ns, now, ttl, id, agent, grace.
-- -> reply(json {verdict: ok | not_held | finishing | cancelled, ...}, message?)
-- complete/fail, before the result is stored: the agent holds the task, nobody else is
-- finishing it, and it was not cancelled; marks it as being finished for `grace` s.
local id, agent = ARGV[4], ARGV[5]
local meta, refused = holding(id, agent, __BATCH__)
if not meta then return refused end
local reason = cancel_reason(id)
if reason then
  revoke(id, meta, 'CANCELLED', reason)
  out.verdict, out.error = 'cancelled', reason
  return reply(cjson.encode(out))
end
meta.finishing = now + tonumber(ARGV[6])
redis.call('HSET', TASKS, id, cjson.encode(meta))
if meta.finishing > tonumber(redis.call('ZSCORE', LEASES, id) or 0) then
  redis.call('ZADD', LEASES, meta.finishing, id)
end
out.verdict = 'ok'
return reply(cjson.encode(out), redis.call('HGET', MESSAGES, id))
