-- include: pull.lua
-- ARGV: ns, now, ttl, id, agent, reason.
-- -> reply(json {verdict: ok | not_held | finishing, error, revoked})
-- cancel: the agent ends the task it holds CANCELLED with `reason` (or the reason of a
-- cancel that came first); its dependents are settled as for any cancellation.
local id, agent = ARGV[4], ARGV[5]
local meta, refused = holding(id, agent, __BATCH__)
if not meta then return refused end
local reason = cancel_reason(id) or ARGV[6]
redis.call('SET', K.cancelled(ns, id), reason, 'EX', ttl)
revoke(id, meta, 'CANCELLED', reason)
out.verdict, out.error = 'ok', reason
return reply(cjson.encode(out))
