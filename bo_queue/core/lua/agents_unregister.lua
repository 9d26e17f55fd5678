-- include: pull.lua
-- ARGV: ns, now, ttl, agent -> reply(json {given_back: ids...}): gives back what it
-- holds (not a task being finished), forgets the agent.
local agent = ARGV[4]
maintain(__BATCH__)
out.given_back = {}
for _, id in ipairs(redis.call('SMEMBERS', agent_tasks(agent))) do
  local meta = held_by(id, agent)
  if meta and not (meta.finishing and meta.finishing > now) then
    unhold(id, meta, nil)
    table.insert(out.given_back, id)
  end
end
redis.call('DEL', agent_tasks(agent), K.agent(ns, agent))
redis.call('ZREM', K.agents(ns), agent)
return reply(cjson.encode(out))
