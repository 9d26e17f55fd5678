-- include: pull.lua
-- ARGV: ns, now, ttl -> reply(json {moved, ...})
out.moved = maintain(__BATCH__)
return reply(cjson.encode(out))
