-- include: keys.lua
-- end_run(ns, id, outcome, now, ttl, fields): the run the record of `id` says is
-- RUNNING has ended with `outcome` (SUCCEEDED, FAILED, CANCELLED, RETRYING or LOST);
-- keep it in the task's run history (K.runs, newest first, the latest __MAX_RUNS__),
-- which expires with the record. Its error, usage and log are this ending's own
-- (`fields`, a flat list), never what an earlier run left on the record.
local function end_run(ns, id, outcome, now, ttl, fields)
  local info = redis.call('HMGET', K.task(ns, id), 'attempts', 'worker', 'started_at')
  local run = {attempt = tonumber(info[1] or '0') or 0, worker = info[2] or nil,
               started_at = tonumber(info[3] or ''), finished_at = now, outcome = outcome}
  for i = 1, #(fields or {}) - 1, 2 do
    local name = fields[i]
    if name == 'error' or name == 'usage' or name == 'log' then run[name] = fields[i + 1] end
  end
  local runs = K.runs(ns, id)
  redis.call('LPUSH', runs, cjson.encode(run))
  redis.call('LTRIM', runs, 0, __MAX_RUNS__ - 1)
  redis.call('EXPIRE', runs, ttl)
end
