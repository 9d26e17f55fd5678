-- include: pull.lua
-- ARGV: ns, now, ttl, id, agent -> reply(json {verdict: ok | not_held | finishing, state})
local id, agent = ARGV[4], ARGV[5]
touch(agent)
maintain(__BATCH__)
local meta, state, holder = held_by(id, agent)
if not meta then return refusal(id, state, holder) end
if meta.finishing and meta.finishing > now then
  out.verdict = 'finishing'
  return reply(cjson.encode(out))
end
out.verdict, out.state = 'ok', unhold(id, meta, nil)
return reply(cjson.encode(out))
