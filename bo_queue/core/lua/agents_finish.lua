-- include: pull.lua
-- ARGV: ns, now, ttl, id, agent, final state, field/value pairs...
-- -> reply(json {verdict: ok | not_held, ...})
-- complete/fail, after the result is stored: end the task, settle its dependents.
local id, agent = ARGV[4], ARGV[5]
maintain(__BATCH__)
local meta, state, holder = held_by(id, agent)
if not meta then return refusal(id, state, holder) end
local fields = {}
for i = 7, #ARGV do table.insert(fields, ARGV[i]) end
finish(id, meta, ARGV[6], fields)
out.verdict = 'ok'
return reply(cjson.encode(out))
