-- apply_livepeer.lua: apply Livepeer facts to ONE stream session, atomically (CONTRACT 4.3, 4.4).
--
-- KEYS: 1 stream HASH, 2 ids SET (both tagged {<session id>}; see docs/redis-keys.md)
-- ARGV: 1 retention ms for an ENDED session, 2 item count, then 9 values per item:
--   snapshot:   'N', digest, lastSeen, sourceBytes, transcodedBytes, raw JSON, recording JSON,
--               createdAt or '', parentId or ''
--   recording:  'R', digest, t_ms, recording JSON, '', '', '', '', ''
--   stream end: 'E', t_ms, '', '', '', '', '', '', ''   (its parent stream's stream.idle at t_ms: the
--               session has ended when the latest such time is at or after its createdAt)
--   idle check: 'I', now_ms, idle_timeout_ms, '', '', '', '', '', ''
-- Returns: { status ('' before the first snapshot), created_ms, last_seen, due (0/1), ver, parent id,
--            one letter per item: A applied, D duplicate or superseded, N no effect, E ended by
--            stream.idle, I idle-ended }
--
-- Kept whatever the order: the newest snapshot (greatest lastSeen, then digest), the newest
-- one before it (for derived rates), each recording field from its newest source.

local K, K_IDS = KEYS[1], KEYS[2]
local retention = ARGV[1]
local n = tonumber(ARGV[2])
local RECORDING_FIELDS = { 'recordingStatus', 'recordingUrl', 'mp4Url' }

local function fmt(x) return string.format('%.0f', x) end
-- Zero-padded, so comparing the strings compares (time, digest).
local function stamp(t, digest) return string.format('%015.0f', t) .. ':' .. digest end

local st = redis.call('HMGET', K, 'cur_ls', 'cur_dg', 'prev_ls', 'prev_dg', 'created_ms', 'xend_ms', 'idle_end')
local cur_ls, cur_dg = tonumber(st[1]), st[2]
local prev_ls, prev_dg = tonumber(st[3]), st[4]
local created = tonumber(st[5])
local xend_ms, idle_end = tonumber(st[6]), st[7] == '1'
-- Ended by its parent's stream.idle when the latest one came at or after the session's creation:
-- re-judged on every call, so the order of snapshots and idles does not matter.
local function explicit() return cur_ls ~= nil and xend_ms ~= nil and xend_ms >= created end
local xend = explicit()
local changed = false
local letters = {}

local function recording(t, digest, json)
  local rec = cjson.decode(json)
  local s = stamp(t, digest)
  local did = false
  for _, f in ipairs(RECORDING_FIELDS) do
    if type(rec[f]) == 'string' then
      local cur = redis.call('HGET', K, 'm:' .. f)
      if not cur or s > cur then
        redis.call('HSET', K, f, rec[f], 'm:' .. f, s)
        did = true
      end
    end
  end
  return did
end

for i = 0, n - 1 do
  local b = 3 + i * 9
  local kind = ARGV[b]
  local letter = 'N'
  if kind == 'N' then
    local digest, ls, sb, tb = ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
    if redis.call('SADD', K_IDS, digest) == 0 then
      letter = 'D'
    else
      local did = false
      if not cur_ls or ls > cur_ls or (ls == cur_ls and digest > cur_dg) then
        if cur_ls and ls > cur_ls then
          -- The newest so far becomes the one before: the rates are derived from these two.
          local old = redis.call('HMGET', K, 'cur_sb', 'cur_tb')
          redis.call('HSET', K, 'prev_ls', fmt(cur_ls), 'prev_dg', cur_dg, 'prev_sb', old[1], 'prev_tb', old[2])
          prev_ls, prev_dg = cur_ls, cur_dg
        end
        cur_ls, cur_dg = ls, digest
        local c = ARGV[b + 7]
        if c == '' then c = fmt(ls) end
        created = tonumber(c)
        redis.call('HSET', K, 'cur', ARGV[b + 5], 'cur_ls', fmt(ls), 'cur_dg', digest, 'cur_sb', sb,
                   'cur_tb', tb, 'created_ms', c, 'parent', ARGV[b + 8])
        did = true
      elseif ls < cur_ls and (not prev_ls or ls > prev_ls or (ls == prev_ls and digest > prev_dg)) then
        redis.call('HSET', K, 'prev_ls', fmt(ls), 'prev_dg', digest, 'prev_sb', sb, 'prev_tb', tb)
        prev_ls, prev_dg = ls, digest
        did = true
      end
      if recording(ls, digest, ARGV[b + 6]) then did = true end
      if did then letter = 'A'; changed = true else letter = 'D' end
    end
  elseif kind == 'R' then
    local digest = ARGV[b + 1]
    if redis.call('SADD', K_IDS, digest) == 1 and recording(tonumber(ARGV[b + 2]), digest, ARGV[b + 3]) then
      letter = 'A'
      changed = true
    else
      letter = 'D'
    end
  elseif kind == 'E' then
    local t = tonumber(ARGV[b + 1])
    if not xend_ms or t > xend_ms then
      xend_ms = t
      redis.call('HSET', K, 'xend_ms', fmt(t))
      changed = true
      letter = 'E'
    end
  elseif kind == 'I' then
    local now, idle = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
    if cur_ls and not explicit() and not idle_end and cur_ls < now - idle then
      idle_end = true
      redis.call('HSET', K, 'idle_end', 1)
      changed = true
      letter = 'I'
    end
  end
  letters[#letters + 1] = letter
end

if not cur_ls then
  -- Recordings or an idle time of a session with no snapshot yet: kept for the retention, in
  -- case it follows.
  if changed then for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, retention) end end
  return { '', '', '', 0, '0', '', table.concat(letters) }
end

xend = explicit()
local ended = xend or idle_end
local status = 'LIVE'
if ended then status = 'ENDED' end
if changed then
  redis.call('HSET', K, 'status', status)
  if ended then
    -- An explicit end (stream.idle) wins over the idle rule, even when it comes later.
    redis.call('HSET', K, 'end_reason', xend and 'ended' or 'idle_timeout', 'summary_due', 1)
  end
  redis.call('HINCRBY', K, 'ver', 1)
end
if ended then
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, retention) end
else
  for _, k in ipairs(KEYS) do redis.call('PERSIST', k) end
end

local bk = redis.call('HMGET', K, 'summary_due', 'ver', 'parent')
local due = 0
if bk[1] == '1' then due = 1 end
return { status, fmt(created or cur_ls), fmt(cur_ls), due, bk[2] or '0', bk[3] or '', table.concat(letters) }
