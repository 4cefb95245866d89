-- apply_rtk.lua: apply a batch of RealtimeKit facts to ONE session, atomically (CONTRACT 4.1, 4.2, 4.4).
--
-- KEYS: 1 session HASH, 2 pev HASH, 3 piv HASH, 4 events HASH, 5 ids SET, 6 art HASH
--       (all tagged {<session id>}; see docs/redis-keys.md)
-- ARGV: 1 retention ms for an ENDED session, 2 item count, then 7 values per item:
--   peer event:      'P', event id, peer id, encoded (t_ms*4+code), t_ms, raw JSON, ''
--   session message: 'S', digest, status, updated_ms, started_ms or '', ended_ms or '', meta JSON
--   artifact:        'A', slot, rank, value JSON, '', '', ''
--   idle check:      'I', now_ms, idle_timeout_ms, '', '', '', ''
-- Returns: { status ('' when the session does not exist), started_ms, last_ms, due (0/1), ver,
--            one letter per item: A applied, D duplicate, L applied but after the end, I idle-ended, N no-op }
--
-- Every item is idempotent and the derived state is a function of the stored facts only, so
-- a redelivered or reordered batch leaves the same state (the reason this is one script).

local K_S, K_PEV, K_PIV, K_EV, K_IDS, K_ART = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local retention = ARGV[1]
local n = tonumber(ARGV[2])

-- Descriptive fields: each from the newest source that carries it (CONTRACT 4.2).
local META_FIELDS = { 'associated_id', 'meeting_display_name', 'organization_id', 'type',
                      'breakout_rooms', 'created_at', 'meta_started_ms' }
-- A copy of a peer-event fact derived from a webhook carries this pair (service/webhooks.py).
local VIA_WEBHOOK = '"via":"webhook"'

local function fmt(x) return string.format('%.0f', x) end
local function num(v) if v then return tonumber(v) end return nil end
-- Which copy of one fact is kept: a topic copy over a webhook-derived one, then the greatest.
local function better(raw, other)
  local a = string.find(raw, VIA_WEBHOOK, 1, true) == nil
  local b = string.find(other, VIA_WEBHOOK, 1, true) == nil
  if a ~= b then return a end
  return raw > other
end

local st = redis.call('HMGET', K_S, 'status', 'xend_u', 'xend_ms', 'idle_end_ms',
                      'last_ms', 'first_ms', 'open_count', 'first_msg_ms')
local existed = st[1] ~= false
local xend_u, xend_ms, idle_end_ms = num(st[2]), num(st[3]), num(st[4])
local last_ms, first_ms, open_count = num(st[5]), num(st[6]), num(st[7]) or 0
local first_msg_ms = num(st[8])
local old_end = xend_ms or idle_end_ms

local changed = false
local art_changed, transcript_changed = false, false
local touched = {}
local letters = {}
local late = 0

for i = 0, n - 1 do
  local b = 3 + i * 7
  local kind = ARGV[b]
  local letter = 'N'
  if kind == 'P' then
    local eid, peer, enc, t, raw = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4]), ARGV[b + 5]
    -- A peer event is one fact by id and one fact by (peer, name, time): either seen makes it a duplicate.
    local fkey = enc .. ':' .. peer
    local new_id = redis.call('SADD', K_IDS, eid) == 1
    local stored = redis.call('HGET', K_EV, fkey)
    if not new_id then
      letter = 'D'
    elseif stored then
      letter = 'D'
      if better(raw, stored) then
        -- Copies of one fact under other ids or paths: one is kept, whatever the arrival order.
        redis.call('HSET', K_EV, fkey, raw)
        changed = true
        touched[peer] = true
      end
    else
      redis.call('HSET', K_EV, fkey, raw)
      changed = true
      touched[peer] = true
      local list = redis.call('HGET', K_PEV, peer)
      if list then list = list .. ',' .. enc else list = enc end
      local sorted = {}
      for e in string.gmatch(list, '%d+') do sorted[#sorted + 1] = tonumber(e) end
      table.sort(sorted)
      for j = 1, #sorted do sorted[j] = fmt(sorted[j]) end
      redis.call('HSET', K_PEV, peer, table.concat(sorted, ','))
      if not last_ms or t > last_ms then last_ms = t end
      if not first_ms or t < first_ms then first_ms = t end
      local end_now = xend_ms or idle_end_ms
      if end_now and t > end_now then letter = 'L'; late = late + 1 else letter = 'A' end
    end
  elseif kind == 'S' then
    local digest, status, upd, started, ended = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]),
                                                ARGV[b + 4], ARGV[b + 5]
    if redis.call('SADD', K_IDS, 'S:' .. digest) == 0 then
      letter = 'D'
    else
      letter = 'A'
      local meta = cjson.decode(ARGV[b + 6])
      if started ~= '' then meta['meta_started_ms'] = started end
      local names, stamp_fields = {}, {}
      for _, f in ipairs(META_FIELDS) do
        if type(meta[f]) == 'string' then
          names[#names + 1] = f
          stamp_fields[#stamp_fields + 1] = 'm:' .. f
        end
      end
      if #names > 0 then
        -- Zero-padded, so comparing the strings compares (time, digest).
        local stamp = string.format('%015.0f', upd) .. ':' .. digest
        local stamps = redis.call('HMGET', K_S, unpack(stamp_fields))
        for i, f in ipairs(names) do
          if not stamps[i] or stamp > stamps[i] then
            redis.call('HSET', K_S, f, meta[f], stamp_fields[i], stamp)
            changed = true
          end
        end
      end
      if status == 'ENDED' and ended ~= '' then
        local e = tonumber(ended)
        if not xend_u or upd > xend_u or (upd == xend_u and e > xend_ms) then
          xend_u, xend_ms = upd, e
          changed = true
          redis.call('HSET', K_S, 'xend_u', fmt(upd), 'xend_ms', ended)
        end
      end
      if not last_ms or upd > last_ms then last_ms = upd; changed = true end
      if not first_msg_ms or upd < first_msg_ms then
        first_msg_ms = upd
        redis.call('HSET', K_S, 'first_msg_ms', fmt(upd))
      end
    end
  elseif kind == 'A' then
    local slot, rank = ARGV[b + 1], ARGV[b + 2]
    local cur = redis.call('HGET', K_ART, 'r:' .. slot)
    if cur and rank <= cur then
      letter = 'D'
    else
      redis.call('HSET', K_ART, 'v:' .. slot, ARGV[b + 3], 'r:' .. slot, rank)
      letter = 'A'
      art_changed = true
      if slot == 'transcript' then transcript_changed = true end
    end
  elseif kind == 'I' then
    local now, idle = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
    if last_ms and not xend_ms and not idle_end_ms and open_count == 0 and last_ms < now - idle then
      idle_end_ms = last_ms
      redis.call('HSET', K_S, 'idle_end_ms', fmt(last_ms))
      changed = true
      letter = 'I'
    end
  end
  letters[#letters + 1] = letter
end

if not last_ms then
  -- Artifacts of a session no other fact has reached yet: kept for the retention, in case
  -- its facts follow (they make the key permanent again, below).
  if art_changed then redis.call('PEXPIRE', K_ART, retention) end
  return { '', '', '', 0, '0', table.concat(letters) }
end
if not existed then
  redis.call('PERSIST', K_ART)
  -- A transcript that came before the session's first fact is due now that the session exists.
  if redis.call('HEXISTS', K_ART, 'v:transcript') == 1 then transcript_changed = true end
end
if art_changed then changed = true end
if transcript_changed then redis.call('HSET', K_S, 'transcript_due', 1) end

local ended_ms = xend_ms or idle_end_ms
if ended_ms ~= old_end then
  -- A new or moved end re-clips every peer.
  for _, peer in ipairs(redis.call('HKEYS', K_PEV)) do touched[peer] = true end
end

local function derive(list)
  -- The peer's intervals from its sorted events, events after the end not applied.
  local out, open, applied = {}, nil, false
  for e in string.gmatch(list, '%d+') do
    e = tonumber(e)
    local t, code = math.floor(e / 4), e % 4
    if ended_ms and t > ended_ms then break end
    applied = true
    if code == 2 and not open then
      open = t
    elseif code == 1 and open then
      out[#out + 1] = fmt(open) .. '-' .. fmt(t)
      open = nil
    end
  end
  if open then
    if ended_ms then out[#out + 1] = fmt(open) .. '-' .. fmt(ended_ms) else out[#out + 1] = fmt(open) .. '-' end
  end
  return applied, table.concat(out, ',')
end

local any_touched = false
for peer in pairs(touched) do
  any_touched = true
  local applied, iv = derive(redis.call('HGET', K_PEV, peer))
  if applied then redis.call('HSET', K_PIV, peer, iv) else redis.call('HDEL', K_PIV, peer) end
end

if any_touched then
  -- Peak by event time over half-open intervals: at equal times leaves (even) sort before joins (odd).
  local pts, closed, open_sum = {}, 0, 0
  open_count = 0
  for _, iv in ipairs(redis.call('HVALS', K_PIV)) do
    for s, e in string.gmatch(iv, '(%d+)%-(%d*)') do
      s = tonumber(s)
      if e == '' then
        open_count = open_count + 1
        open_sum = open_sum + s
        pts[#pts + 1] = s * 2 + 1
      else
        e = tonumber(e)
        if e > s then
          closed = closed + (e - s)
          pts[#pts + 1] = s * 2 + 1
          pts[#pts + 1] = e * 2
        end
      end
    end
  end
  table.sort(pts)
  local cur, peak = 0, 0
  for _, p in ipairs(pts) do
    if p % 2 == 1 then
      cur = cur + 1
      if cur > peak then peak = cur end
    else
      cur = cur - 1
    end
  end
  local as_of = ended_ms or last_ms
  redis.call('HSET', K_S,
    'max_concurrent_participants', peak,
    'open_count', open_count,
    'open_start_sum', fmt(open_sum),
    'closed_ms', fmt(closed),
    'participants_total', redis.call('HLEN', K_PIV),
    'minutes_consumed', tostring((closed + open_count * as_of - open_sum) / 60000))
end

local meta_started = redis.call('HGET', K_S, 'meta_started_ms')
-- started_at: a source's start, else the earliest peer event, else the earliest message.
local started = meta_started or fmt(first_ms or first_msg_ms or last_ms)
local status = 'LIVE'
if ended_ms then status = 'ENDED' end

if changed then
  redis.call('HSET', K_S, 'status', status, 'started_ms', started, 'last_ms', fmt(last_ms),
             'live_participants', ended_ms and 0 or open_count)
  -- The earliest peer event only: a fallback stored here would depend on arrival order.
  if first_ms then redis.call('HSET', K_S, 'first_ms', fmt(first_ms)) end
  -- RealtimeKit webhooks do not say the session type: 'meeting' until a source that does
  -- (it carries no stamp, so any source's value replaces it).
  redis.call('HSETNX', K_S, 'type', 'meeting')
  if ended_ms then
    local reason = xend_ms and 'ended' or 'idle_timeout'
    redis.call('HSET', K_S, 'ended_ms', fmt(ended_ms), 'end_reason', reason, 'summary_due', 1)
  end
  redis.call('HINCRBY', K_S, 'ver', 1)
end
if late > 0 then redis.call('HINCRBY', K_S, 'late_events', late) end

if ended_ms then
  -- Ended sessions expire after the retention; each change restarts the clock.
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, retention) end
end

local bk = redis.call('HMGET', K_S, 'summary_due', 'transcript_due', 'ver')
local due = 0
if bk[1] == '1' or bk[2] == '1' then due = 1 end
return { status, started, fmt(last_ms), due, bk[3] or '0', table.concat(letters) }
