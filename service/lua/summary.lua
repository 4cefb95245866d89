-- summary.lua: the SessionSummary outbox of one session (CONTRACT 2, 3, 6).
--
-- KEYS: 1 session HASH ({<session id>})
-- ARGV, mode 'commit': 'commit', ver read with the state, summary_rev read with it, content hash, body
--   Stores the body as the next revision when its content differs from the stored one; it was
--   built from the state at that ver, so a changed ver means the build is stale.
--   Returns { 'retry' } | { 'new', rev, body } | { 'same', rev, body, published }
-- ARGV, mode 'published': 'published', rev
--   Records that revision rev reached Kafka. Returns the published revision.
--
-- The stored body is what is published, so every copy of one (message_id, revision) is identical.

local K_S = KEYS[1]
local mode = ARGV[1]

if mode == 'published' then
  local rev = tonumber(ARGV[2])
  local cur = tonumber(redis.call('HGET', K_S, 'summary_published') or '0')
  if rev > cur then
    redis.call('HSET', K_S, 'summary_published', rev)
    cur = rev
  end
  return cur
end

local ver, rev_seen, hash, body = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local st = redis.call('HMGET', K_S, 'ver', 'summary_rev', 'summary_hash', 'summary_body', 'summary_published')
if st[1] ~= ver then return { 'retry' } end
local rev = tonumber(st[2] or '0')
redis.call('HSET', K_S, 'summary_due', 0)
if st[3] == hash then
  return { 'same', rev, st[4], tonumber(st[5] or '0') }
end
if rev ~= rev_seen then return { 'retry' } end
rev = rev + 1
redis.call('HSET', K_S, 'summary_rev', rev, 'summary_hash', hash, 'summary_body', body)
return { 'new', rev, body }
