-- study_event(stream, id, status, message, now): announce a study's status change on the
-- events stream (bo_queue.core.events), capped as set_state caps it.
-- KEYS: events stream. ARGV: study id, status, message, now. (Included by study scripts.)
local function study_event(stream, id, status, message, now)
  redis.call('XADD', stream, 'MAXLEN', '~', __MAX_EVENTS__, '*', 'kind', 'study', 'id', id,
             'state', status, 'at', tostring(now), 'message', message)
end
