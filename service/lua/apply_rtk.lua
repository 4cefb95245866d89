-- apply_rtk.lua: apply a batch of RealtimeKit facts to ONE session, atomically (CONTRACT 4.1, 4.2, 4.4).
--
-- KEYS: 1 session HASH, 2 pev HASH, 3 piv HASH, 4 events HASH, 5 ids SET, 6 art HASH
--       (all tagged {<session id>}; see docs/redis-keys.md)
-- ARGV: 1 retention ms for an ENDED session, 2 item count, then the items, each a kind letter
--       and its values (their number depends on the kind):
--   peer event:      'P', event id, peer id, encoded (t_ms*4+code), raw JSON
--   session message: 'S', digest, status, updated_ms, started_ms or '', ended_ms or '',
--                    stamp (updated_ms zero-padded to 15 digits, ':', digest), k, then k pairs of
--                    descriptive field and value
--   artifact:        'A', slot, rank, value JSON
--   idle check:      'I', now_ms, idle_timeout_ms
-- Returns: { status ('' when the session does not exist), started_ms, last_ms, due (0/1), ver,
--            one letter per item: A applied, D duplicate, L applied but after the end, I idle-ended, N no-op }
--
-- Every item is idempotent and the derived state is a function of the stored facts only, so
-- a redelivered or reordered batch leaves the same state (the reason this is one script).
--
-- Cost: the script runs once per session per batch, so it reads what the items need with a
-- few multi-field commands first, works on Lua tables, and writes each key once at the end
-- (a redis.call costs more than the Lua around it). Items are still taken one after the
-- other: a duplicate within the batch, or an end before a later event, is judged in order.

local K_S, K_PEV, K_PIV, K_EV, K_IDS, K_ART = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local retention = ARGV[1]
local n = tonumber(ARGV[2])
local WIDTH = { P = 5, A = 4, I = 3 }
local function width(b)
  local kind = ARGV[b]
  return WIDTH[kind] or 8 + 2 * tonumber(ARGV[b + 7])
end

-- Descriptive fields: each from the newest source that carries it (CONTRACT 4.2).
local META_FIELDS = { 'associated_id', 'meeting_display_name', 'organization_id', 'type',
                      'breakout_rooms', 'created_at', 'meta_started_ms' }
-- A copy of a peer-event fact derived from a webhook carries this pair (service/webhooks.py).
local VIA_WEBHOOK = '"via":"webhook"'

-- Integral times in ms: '%d' formats them exactly (Lua numbers are doubles; < 2^53 here).
local function fmt(x) return string.format('%d', x) end
local function num(v) if v then return tonumber(v) end return nil end
-- Which copy of one fact is kept: a topic copy over a webhook-derived one, then the greatest.
local function better(raw, other)
  local a = string.find(raw, VIA_WEBHOOK, 1, true) == nil
  local b = string.find(other, VIA_WEBHOOK, 1, true) == nil
  if a ~= b then return a end
  return raw > other
end
-- A peer's events, as stored: encoded values in ascending numeric order, comma-separated.
-- Returns the list with `encs` added, and its values as numbers, in order.
local function merge(list, encs)
  local toks, nums = {}, {}
  if list then
    for tok in string.gmatch(list, '%d+') do toks[#toks + 1] = tok; nums[#nums + 1] = tonumber(tok) end
  end
  for _, enc in ipairs(encs) do
    -- Insertion from the end: an event newer than the peer's others costs one comparison.
    local e, i = tonumber(enc), #nums
    while i > 0 and nums[i] > e do
      nums[i + 1], toks[i + 1] = nums[i], toks[i]
      i = i - 1
    end
    nums[i + 1], toks[i + 1] = e, enc
  end
  return table.concat(toks, ','), nums
end
local function numbers(list)
  local nums = {}
  for tok in string.gmatch(list, '%d+') do nums[#nums + 1] = tonumber(tok) end
  return nums
end

-- Commands with one argument per item, in slices: Lua's unpack() refuses more than about
-- 8,000 values, and one session can bring more items than that in one batch.
local SLICE = 4000
local function call_many(cmd, key, args)
  local out = {}
  for i = 1, #args, SLICE do
    local r = redis.call(cmd, key, unpack(args, i, math.min(i + SLICE - 1, #args)))
    if type(r) == 'table' then for j = 1, #r do out[#out + 1] = r[j] end end
  end
  return out
end
local function hset_table(key, t)
  local flat = {}
  for f, v in pairs(t) do flat[#flat + 1] = f; flat[#flat + 1] = v end
  if #flat > 0 then call_many('HSET', key, flat) end
end

-- 1. Read what the items need: the session's fields, which ids are known, the stored copies
--    of the facts and the peers' event lists.
local st = redis.call('HMGET', K_S, 'status', 'xend_u', 'xend_ms', 'idle_end_ms', 'last_ms', 'first_ms',
                      'open_count', 'first_msg_ms', 'summary_due', 'transcript_due', 'ver', 'type',
                      'late_events', 'closed_ms', 'open_start_sum', 'meta_started_ms')
local existed = st[1] ~= false
local xend_u, xend_ms, idle_end_ms = num(st[2]), num(st[3]), num(st[4])
local last_ms, first_ms, open_count = num(st[5]), num(st[6]), num(st[7]) or 0
local first_msg_ms = num(st[8])
local summary_due, transcript_due, ver, has_type = st[9] == '1', st[10] == '1', num(st[11]) or 0, st[12] ~= false
local late_events = num(st[13]) or 0
local closed_ms, open_start_sum = num(st[14]), num(st[15])
local stamps, meta_now = {}, { meta_started_ms = st[16] or nil }
local old_end = xend_ms or idle_end_ms

local ids, fkeys, peers, seen_peer = {}, {}, {}, {}
local has_messages = false
do
  local b = 3
  for _ = 1, n do
    local kind = ARGV[b]
    if kind == 'P' then
      ids[#ids + 1] = ARGV[b + 1]
      fkeys[#fkeys + 1] = ARGV[b + 3] .. ':' .. ARGV[b + 2]
      local peer = ARGV[b + 2]
      if not seen_peer[peer] then seen_peer[peer] = true; peers[#peers + 1] = peer end
    elseif kind == 'S' then
      ids[#ids + 1] = 'S:' .. ARGV[b + 1]
      has_messages = true
    end
    b = b + width(b)
  end
end
if has_messages then
  -- Each descriptive field's value and stamp: only session messages need them.
  local fields = {}
  for _, f in ipairs(META_FIELDS) do fields[#fields + 1] = f; fields[#fields + 1] = 'm:' .. f end
  local r = redis.call('HMGET', K_S, unpack(fields))
  for i, f in ipairs(META_FIELDS) do
    meta_now[f] = r[2 * i - 1] or nil
    stamps[f] = r[2 * i] or nil
  end
end
local known, stored, pev = {}, {}, {}
if #ids > 0 then
  local r = call_many('SMISMEMBER', K_IDS, ids)
  for i, id in ipairs(ids) do if r[i] == 1 then known[id] = true end end
end
if #fkeys > 0 then
  local r = call_many('HMGET', K_EV, fkeys)
  for i, f in ipairs(fkeys) do stored[f] = r[i] end
  r = call_many('HMGET', K_PEV, peers)
  for i, p in ipairs(peers) do pev[p] = r[i] or nil end
end

-- 2. The items, in order, on the tables.
local changed = false
local art_changed, transcript_changed = false, false
local touched, ev_out, added, s_out = {}, {}, {}, {}
local new_ids = {}
local letters = {}
local late = 0

local b = 3
for _ = 1, n do
  local kind = ARGV[b]
  local letter = 'N'
  if kind == 'P' then
    local eid, peer, enc, raw = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
    -- A peer event is one fact by id and one fact by (peer, name, time): either seen makes it a duplicate.
    local fkey = enc .. ':' .. peer
    local new_id = not known[eid]
    if new_id then known[eid] = true; new_ids[#new_ids + 1] = eid end
    local copy = stored[fkey]
    if not new_id then
      letter = 'D'
    elseif copy then
      letter = 'D'
      if better(raw, copy) then
        -- Copies of one fact under other ids or paths: one is kept, whatever the arrival order.
        stored[fkey] = raw
        ev_out[fkey] = raw
        changed = true
        touched[peer] = true
      end
    else
      stored[fkey] = raw
      ev_out[fkey] = raw
      changed = true
      touched[peer] = true
      local encs = added[peer]
      if encs then encs[#encs + 1] = enc else added[peer] = { enc } end
      local t = math.floor(tonumber(enc) / 4)
      if not last_ms or t > last_ms then last_ms = t end
      if not first_ms or t < first_ms then first_ms = t end
      local end_now = xend_ms or idle_end_ms
      if end_now and t > end_now then letter = 'L'; late = late + 1 else letter = 'A' end
    end
  elseif kind == 'S' then
    local digest, status, upd, started, ended = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 3]),
                                                ARGV[b + 4], ARGV[b + 5]
    local id = 'S:' .. digest
    if known[id] then
      letter = 'D'
    else
      known[id] = true
      new_ids[#new_ids + 1] = id
      letter = 'A'
      local meta = {}
      for j = b + 8, b + 7 + 2 * tonumber(ARGV[b + 7]), 2 do meta[ARGV[j]] = ARGV[j + 1] end
      if started ~= '' then meta['meta_started_ms'] = started end
      -- Zero-padded, so comparing the strings compares (time, digest).
      local stamp = ARGV[b + 6]
      for _, f in ipairs(META_FIELDS) do
        if type(meta[f]) == 'string' and (not stamps[f] or stamp > stamps[f]) then
          stamps[f], meta_now[f] = stamp, meta[f]
          s_out[f], s_out['m:' .. f] = meta[f], stamp
          changed = true
        end
      end
      if status == 'ENDED' and ended ~= '' then
        local e = tonumber(ended)
        if not xend_u or upd > xend_u or (upd == xend_u and e > xend_ms) then
          xend_u, xend_ms = upd, e
          changed = true
          s_out['xend_u'], s_out['xend_ms'] = fmt(upd), ended
        end
      end
      if not last_ms or upd > last_ms then last_ms = upd; changed = true end
      if not first_msg_ms or upd < first_msg_ms then
        first_msg_ms = upd
        s_out['first_msg_ms'] = fmt(upd)
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
      s_out['idle_end_ms'] = fmt(last_ms)
      changed = true
      letter = 'I'
    end
  end
  letters[#letters + 1] = letter
  b = b + width(b)
end

-- 3. Write the facts: ids, stored copies, peers' event lists.
if #new_ids > 0 then call_many('SADD', K_IDS, new_ids) end
hset_table(K_EV, ev_out)
local nums_of = {}  -- peer -> its events as numbers, for the peers whose list was merged
do
  local lists = {}
  for p, encs in pairs(added) do
    lists[p], nums_of[p] = merge(pev[p], encs)
    pev[p] = lists[p]
  end
  hset_table(K_PEV, lists)
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
if transcript_changed then transcript_due = true; s_out['transcript_due'] = 1 end

-- 4. Intervals of the peers whose events changed (every peer when the end moved), then totals.
local ended_ms = xend_ms or idle_end_ms
if ended_ms ~= old_end then
  -- A new or moved end re-clips every peer.
  local all = redis.call('HGETALL', K_PEV)
  for i = 1, #all, 2 do
    touched[all[i]] = true
    if pev[all[i]] == nil then pev[all[i]] = all[i + 1] end
  end
end

local function derive(nums)
  -- The peer's intervals from its sorted events, events after the end not applied.
  local out, open, applied = {}, nil, false
  for _, e in ipairs(nums) do
    local code = e % 4
    local t = (e - code) / 4
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

-- Only intervals that changed are written; the totals are swept again only then.
local any_touched, any_changed = false, false
do
  local peers_t = {}
  for peer in pairs(touched) do peers_t[#peers_t + 1] = peer end
  if #peers_t > 0 then
    any_touched = true
    local old = call_many('HMGET', K_PIV, peers_t)
    local piv_out, gone = {}, {}
    for i, peer in ipairs(peers_t) do
      local nums = nums_of[peer]
      if nums == nil then
        local list = pev[peer]
        if list == nil then list = redis.call('HGET', K_PEV, peer) or '' end
        nums = numbers(list)
      end
      local applied, iv = derive(nums)
      if applied then
        if old[i] ~= iv then piv_out[peer] = iv; any_changed = true end
      elseif old[i] then
        gone[#gone + 1] = peer
        any_changed = true
      end
    end
    hset_table(K_PIV, piv_out)
    if #gone > 0 then call_many('HDEL', K_PIV, gone) end
  end
end

local as_of = ended_ms or last_ms
if any_touched and not any_changed and closed_ms ~= nil then
  -- The intervals are as they were: only the time the live minutes are counted to moved.
  s_out['minutes_consumed'] = tostring((closed_ms + open_count * as_of - open_start_sum) / 60000)
elseif any_touched then
  -- Peak by event time over half-open intervals: at equal times leaves (even) sort before joins (odd).
  local pts, closed, open_sum = {}, 0, 0
  open_count = 0
  local vals = redis.call('HVALS', K_PIV)
  -- One pass over every peer's intervals ("start-end" or "start-" when open).
  for s, e in string.gmatch(table.concat(vals, ','), '(%d+)%-(%d*)') do
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
  s_out['max_concurrent_participants'] = peak
  s_out['open_count'] = open_count
  s_out['open_start_sum'] = fmt(open_sum)
  s_out['closed_ms'] = fmt(closed)
  s_out['participants_total'] = #vals
  s_out['minutes_consumed'] = tostring((closed + open_count * as_of - open_sum) / 60000)
end

-- started_at: a source's start, else the earliest peer event, else the earliest message.
local started = meta_now['meta_started_ms'] or fmt(first_ms or first_msg_ms or last_ms)
local status = 'LIVE'
if ended_ms then status = 'ENDED' end

if changed then
  s_out['status'], s_out['started_ms'], s_out['last_ms'] = status, started, fmt(last_ms)
  s_out['live_participants'] = ended_ms and 0 or open_count
  -- The earliest peer event only: a fallback stored here would depend on arrival order.
  if first_ms then s_out['first_ms'] = fmt(first_ms) end
  -- RealtimeKit webhooks do not say the session type: 'meeting' until a source that does
  -- (it carries no stamp, so any source's value replaces it).
  if not has_type and s_out['type'] == nil then s_out['type'] = 'meeting' end
  if ended_ms then
    s_out['ended_ms'], s_out['end_reason'] = fmt(ended_ms), xend_ms and 'ended' or 'idle_timeout'
    s_out['summary_due'] = 1
    summary_due = true
  end
  ver = ver + 1
  s_out['ver'] = ver
end
if late > 0 then s_out['late_events'] = late_events + late end
hset_table(K_S, s_out)

if ended_ms and (next(s_out) ~= nil or #new_ids > 0 or art_changed) then
  -- Ended sessions expire after the retention; each change restarts the clock.
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, retention) end
end

local due = 0
if summary_due or transcript_due then due = 1 end
return { status, started, fmt(last_ms), due, fmt(ver), table.concat(letters) }
