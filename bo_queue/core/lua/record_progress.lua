-- KEYS: record. ARGV: fraction, message.
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_message', ARGV[2])
end
return 1
