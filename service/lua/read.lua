-- read.lua: several hashes of ONE session, read atomically (a consistent view of one hash slot).
--
-- KEYS: the session's hashes to read (all tagged {<session id>})
-- ARGV: none
-- Returns: one flat HGETALL reply per key, in KEYS order.
--
-- A script rather than MULTI/EXEC: it is atomic on a single node and on a cluster alike.

local out = {}
for i, k in ipairs(KEYS) do out[i] = redis.call('HGETALL', k) end
return out
