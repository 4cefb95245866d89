-- summary.lua: the SessionSummary outbox of one session (CONTRACT 2, 3, 6).
--
-- KEYS: 1 session HASH ({<session id>})
-- ARGV, mode 'commit': 'commit', ver read with the state, summary_rev read with it, content hash, body
--   The body was built from the state at that ver; a changed ver means the build is stale.
--   Returns { kind, revision, body to publish or '' }:
--     'retry'    the state moved on: rebuild
--     'pending'  the stored revision never reached Kafka: publish it first, then come back
--     'same'     the content equals the stored revision (body given if not yet published)
--     'new'      stored as the next revision: publish it
-- ARGV, mode 'published': 'published', rev
--   Records that revision rev reached Kafka. Returns the published revision.
--
-- The stored body is what is published, so every copy of one (message_id, revision) is
-- identical, and no stored revision is skipped.

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
if st[1] ~= ver then return { 'retry', 0, '' } end
local rev = tonumber(st[2] or '0')
local published = tonumber(st[5] or '0')
if st[3] == hash then
  redis.call('HSET', K_S, 'summary_due', 0)
  if published < rev then return { 'same', rev, st[4] } end
  return { 'same', rev, '' }
end
if published < rev then return { 'pending', rev, st[4] } end
if rev ~= rev_seen then return { 'retry', 0, '' } end
rev = rev + 1
redis.call('HSET', K_S, 'summary_rev', rev, 'summary_hash', hash, 'summary_body', body, 'summary_due', 0)
return { 'new', rev, body }
