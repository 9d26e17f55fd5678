-- KEYS: pairs of (holders, needs). ARGV: holder, expiry (0: release), then per pair what
-- it holds ("n1,n2,..."). Renewing puts back a hold whose lease lapsed (Redis was away
-- longer than the lease and another worker swept it): the run goes on, so it counts.
-- -> how many holds had lapsed
local lapsed = 0
for i = 1, #KEYS, 2 do
  if tonumber(ARGV[2]) == 0 then
    redis.call('ZREM', KEYS[i], ARGV[1])
    redis.call('HDEL', KEYS[i + 1], ARGV[1])
  else
    if redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1]) == 1 then lapsed = lapsed + 1 end
    redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[2 + (i + 1) / 2])
  end
end
return lapsed
