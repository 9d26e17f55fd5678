-- KEYS: trials hash, reported hash, inbox, curves hash, values-by-step hash.
-- ARGV: index, step, canonical values JSON, the watched metric's value, minimize (1|0),
--       percentile ('' for none), threshold ('' for none), min_progression, min_curves,
--       the stop marker (for the reported hash), the inbox entry pushed when it stops.
-- -> 'stop' (stops now) | 'stopped' (the report that stopped it, again) | 'continue'
--    | 'missing' | 'ended' | 'conflict' (other values at that step) | 'backwards=<step>'
-- Curves are kept as text the caller wrote (no re-encoding of floats by cjson):
--   curves   <index> -> '[[step,values],...]', <index>.last -> '<step> <values>'
--   by step  <step>  -> '<index>=<value> <index>=<value> ...' (the watched metric)
local index, step = ARGV[1], tonumber(ARGV[2])
local raw = redis.call('HGET', KEYS[1], index)
if not raw then return 'missing' end
local last = redis.call('HGET', KEYS[4], index .. '.last')
local last_step, last_values
if last then
  local sep = string.find(last, ' ', 1, true)
  last_step, last_values = tonumber(string.sub(last, 1, sep - 1)), string.sub(last, sep + 1)
end
local repeated = last_step == step and last_values == ARGV[3]
local reported = redis.call('HGET', KEYS[2], index)
if reported then
  if reported == ARGV[10] and repeated then return 'stopped' end
  return 'ended'
end
if cjson.decode(raw)['status'] ~= 'RUNNING' then return 'ended' end
if last_step then
  if repeated then return 'continue' end
  if step == last_step then return 'conflict' end
  if step < last_step then return 'backwards=' .. last_step end
end

local point = '[' .. ARGV[2] .. ',' .. ARGV[3] .. ']'
local curve = redis.call('HGET', KEYS[4], index)
curve = curve and (string.sub(curve, 1, -2) .. ',' .. point .. ']') or ('[' .. point .. ']')
redis.call('HSET', KEYS[4], index, curve, index .. '.last', ARGV[2] .. ' ' .. ARGV[3])
local mine = index .. '=' .. ARGV[4]
local at = redis.call('HGET', KEYS[5], ARGV[2])
at = at and (at .. ' ' .. mine) or mine
redis.call('HSET', KEYS[5], ARGV[2], at)

if step < tonumber(ARGV[8]) then return 'continue' end
local value, minimize = tonumber(ARGV[4]), ARGV[5] == '1'
local function worse(a, b)
  if minimize then return a > b end
  return a < b
end
local stop = ARGV[7] ~= '' and worse(value, tonumber(ARGV[7]))
if not stop and ARGV[6] ~= '' then
  local values = {}
  for v in string.gmatch(at, '=(%S+)') do values[#values + 1] = tonumber(v) end
  if #values >= tonumber(ARGV[9]) then
    -- the percentile as pandas' quantile (linear), flipped when minimizing: Ax's rule
    table.sort(values)
    local q = tonumber(ARGV[6]) / 100
    if minimize then q = 1 - q end
    local pos = q * (#values - 1) + 1
    local low = math.floor(pos)
    local high = math.min(low + 1, #values)
    stop = worse(value, values[low] + (values[high] - values[low]) * (pos - low))
  end
end
if not stop then return 'continue' end
redis.call('HSET', KEYS[2], index, ARGV[10])
redis.call('RPUSH', KEYS[3], ARGV[11])
return 'stop'
