-- peer_report.lua: keep the newest PeerReport of one peer (CONTRACT 2, `rtk.peer-reports`).
--
-- KEYS: 1 the peer's report HASH (sp:report:{<peer id>}): session_id, rank, peer_report
-- ARGV: 1 rank (greater is newer), 2 session id, 3 PeerReport JSON, 4 retention ms
-- Returns: 1 stored, 0 not newer than the stored one (a duplicate or a stale report)

local cur = redis.call('HGET', KEYS[1], 'rank')
if cur and ARGV[1] <= cur then return 0 end
redis.call('HSET', KEYS[1], 'rank', ARGV[1], 'session_id', ARGV[2], 'peer_report', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
