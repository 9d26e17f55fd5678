-- include: pull.lua
-- ARGV: ns, now, ttl, id, agent -> reply(json {verdict: ok | not_held | finishing, state})
local id, agent = ARGV[4], ARGV[5]
local meta, refused = holding(id, agent, __BATCH__)
if not meta then return refused end
out.verdict, out.state = 'ok', unhold(id, meta, nil)
return reply(cjson.encode(out))
