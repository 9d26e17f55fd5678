-- KEYS: the suspicion. ARGV: the one reconciled. Cleared only if no newer one came since.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
