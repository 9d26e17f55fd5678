-- include: transition.lua
-- KEYS: record. ARGV: ns, id, new state, now, ttl, then field/value pairs.
-- Moves a non-terminal record on (transition.lua).
-- -> reply(1 moved | 0 not) (settle.lua)
local fields = {}
for i = 6, #ARGV do table.insert(fields, ARGV[i]) end
return reply(transition(ARGV[1], ARGV[2], KEYS[1], ARGV[3], tonumber(ARGV[4]),
                        tonumber(ARGV[5]), fields))
