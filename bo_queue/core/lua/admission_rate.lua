-- KEYS: starts (zset member -> time). ARGV: period, count, task id.
-- -> 0 admitted | seconds until a start frees up. The time is Redis's own: with each
-- worker's clock, a worker delayed between reading it and running this script could
-- admit a start into a window that others had already filled.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local period, count = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) < count then
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. now)
  redis.call('EXPIRE', KEYS[1], math.ceil(period) + 1)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + period - now)
