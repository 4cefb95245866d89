-- revision.lua: one outbound message of one session, as numbered revisions (CONTRACT 2, 3, 6).
--
-- The channel (ARGV[2], 'summary' or 'transcript') names the session fields it keeps:
-- <ch>_rev, <ch>_hash, <ch>_body, <ch>_published, <ch>_due.
--
-- KEYS: 1 session HASH ({<session id>})
-- ARGV, mode 'commit': 'commit', channel, ver read with the state, <ch>_rev read with it, content hash, body
--   The body was built from the state at that ver; a changed ver means the build is stale.
--   Returns { kind, revision, body to publish or '' }:
--     'retry'    the state moved on: rebuild
--     'pending'  the stored revision never reached Kafka: publish it first, then come back
--     'same'     the content equals the stored revision (body given if not yet published)
--     'new'      stored as the next revision: publish it
-- ARGV, mode 'published': 'published', channel, rev
--   Records that revision rev reached Kafka. Returns the published revision.
--
-- The stored body is what is published, so every copy of one (message_id, revision) is
-- identical, and no stored revision is skipped.

local K_S = KEYS[1]
local mode, ch = ARGV[1], ARGV[2]
local F_REV, F_HASH, F_BODY, F_PUB, F_DUE = ch .. '_rev', ch .. '_hash', ch .. '_body', ch .. '_published',
                                            ch .. '_due'

if mode == 'published' then
  local rev = tonumber(ARGV[3])
  local cur = tonumber(redis.call('HGET', K_S, F_PUB) or '0')
  if rev > cur then
    redis.call('HSET', K_S, F_PUB, rev)
    cur = rev
  end
  return cur
end

local ver, rev_seen, hash, body = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local st = redis.call('HMGET', K_S, 'ver', F_REV, F_HASH, F_BODY, F_PUB)
if st[1] ~= ver then return { 'retry', 0, '' } end
local rev = tonumber(st[2] or '0')
local published = tonumber(st[5] or '0')
if st[3] == hash then
  redis.call('HSET', K_S, F_DUE, 0)
  if published < rev then return { 'same', rev, st[4] } end
  return { 'same', rev, '' }
end
if published < rev then return { 'pending', rev, st[4] } end
if rev ~= rev_seen then return { 'retry', 0, '' } end
rev = rev + 1
redis.call('HSET', K_S, F_REV, rev, F_HASH, hash, F_BODY, body, F_DUE, 0)
return { 'new', rev, body }
