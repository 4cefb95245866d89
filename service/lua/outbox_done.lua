-- outbox_done.lua: remove a drained session from the outbox, unless it changed meanwhile.
--
-- KEYS: 1 the outbox ZSET (sp:outbox)
-- ARGV: 1 session id, 2 the score (the session's change counter) read before draining
-- Returns: 1 removed, 0 kept (the worker re-queued it with a higher counter: drain again)

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
