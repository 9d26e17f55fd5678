-- KEYS: kombu's unacked hash, its unacked index, then the queue list of each message.
-- ARGV: for each message: its delivery tag, its unacked entry as read, the message to push.
-- -> the tags put back. A message is put back only if its entry is still the one read
-- (not acknowledged or put back by anyone since), at the head of its list, as kombu's
-- restore_by_tag does: it runs next.
local restored = {}
for i = 3, #KEYS do
  local tag, entry, message = ARGV[3 * i - 8], ARGV[3 * i - 7], ARGV[3 * i - 6]
  if redis.call('HGET', KEYS[1], tag) == entry then
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[2], tag)
    redis.call('RPUSH', KEYS[i], message)
    restored[#restored + 1] = tag
  end
end
return restored
