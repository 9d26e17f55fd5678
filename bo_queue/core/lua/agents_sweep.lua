-- include: pull.lua
-- ARGV: ns, now, ttl -> {json {moved, ...}}
out.moved = maintain(__BATCH__)
return {cjson.encode(out)}
