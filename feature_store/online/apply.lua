-- Apply one micro-batch of one source partition to the online store, atomically and fenced.
--
-- KEYS[1]        the partition's offset key (HASH: offset, watermark)
-- KEYS[2..]      the state keys the batch touches, all in the partition's hash tag
-- ARGV[1]        the offset the writer believes is stored (-1: none); anything else refuses the batch
-- ARGV[2]        first offset of the batch (must be beyond the stored one)
-- ARGV[3]        last offset of the batch, stored on success
-- ARGV[4]        partition watermark after the batch (event time ms), stored on success
-- ARGV[5]        msgpack list of merge-op lists, one per tile layout (TileLayout.ops)
-- ARGV[6]        msgpack list of items, item i for KEYS[i + 1]:
--                  tiles:  {1, layout, pexpire_ms, keep_ms, refresh, period_ms, tile_start, packed_stats, ...}
--                  latest: {2, 0, pexpire_ms, refresh, event_time, tie, seq, packed_value}
--                pexpire_ms 0: no expiry; the TTL is set when refresh is 1 or the script creates the
--                key/tile (the writer refreshes each key at most once per interval: PEXPIRE is costly)
-- Returns {'applied', last, now_ms} (now_ms: the server clock when the batch became readable, for
-- freshness) or {'fenced', stored}.
--
-- Every tile hash also holds two marker fields for readers that cache closed tiles
-- (feature_store/online/tile_cache.py): '~t' the newest tile start ever written to the hash, and
-- '~m' a version that changes whenever a tile older than '~t' is written or pruned (materialization
-- keeps them too: set_tiles.lua). A hash without '~m' (new, or from an older version) gets a fresh '~m'
-- from the server clock in microseconds - larger than any value an earlier life of the key
-- reached by +1 bumps - and '~t' = its newest tile present.

local stored = redis.call('HGET', KEYS[1], 'offset')
local stored_n = -1
if stored then stored_n = tonumber(stored) end
if stored_n ~= tonumber(ARGV[1]) or tonumber(ARGV[2]) <= stored_n then
  return {'fenced', tostring(stored_n)}
end

-- parse "add" | "newest" | "last" | "lastpart" | "min:<n>" | "max:<n>" | "m2:<n>:<s>" once per call into two
-- lists of {code, i, n, s}: the stats that read counts (m2, min, max; last reads its own group) and the
-- adds and newest that change counts. merge() writes into `a` in place, reading stats before adding, so
-- every stat sees the counts as stored.
local ADD, NEWEST, MIN, MAX, M2, LAST = 1, 2, 3, 4, 5, 6
local CODES = {add = ADD, newest = NEWEST, min = MIN, max = MAX, m2 = M2, last = LAST}
local layouts = {}
for li, ops in ipairs(cmsgpack.unpack(ARGV[5])) do
  local reads, adds = {}, {}
  for i, op in ipairs(ops) do
    local kind, n, s = string.match(op, '^(%w+):?(%d*):?(%d*)$')
    local code = CODES[kind]
    if code == ADD or code == NEWEST then
      adds[#adds + 1] = {code, i}
    elseif code then  -- 'lastpart' is handled by its 'last'
      reads[#reads + 1] = {code, i, tonumber(n), tonumber(s)}
    end
  end
  layouts[li] = {reads, adds}
end

local function merge(ops, a, b)
  local reads, adds = ops[1], ops[2]
  for r = 1, #reads do
    local op = reads[r]
    local code, i = op[1], op[2]
    if code == M2 then
      local na, nb = a[op[3]], b[op[3]]
      if na == 0 then
        a[i] = b[i]
      elseif nb ~= 0 then
        local s = op[4]
        local delta = b[s] / nb - a[s] / na
        a[i] = a[i] + b[i] + delta * delta * na * nb / (na + nb)
      end
    elseif code == LAST then
      -- lt, lk, lq, lv sit at i .. i+3; the newer (lt, lk, lq) wins all four
      if b[i] > a[i] or (b[i] == a[i] and (b[i + 1] > a[i + 1] or (b[i + 1] == a[i + 1] and b[i + 2] > a[i + 2]))) then
        a[i], a[i + 1], a[i + 2], a[i + 3] = b[i], b[i + 1], b[i + 2], b[i + 3]
      end
    else  -- MIN or MAX
      local n = op[3]
      if a[n] == 0 then
        a[i] = b[i]
      elseif b[n] ~= 0 and ((code == MIN and b[i] < a[i]) or (code == MAX and b[i] > a[i])) then
        a[i] = b[i]
      end
    end
  end
  for r = 1, #adds do
    local op = adds[r]
    local i = op[2]
    if op[1] == ADD then
      a[i] = a[i] + b[i]
    elseif b[i] > a[i] then
      a[i] = b[i]
    end
  end
  return a
end

local function newer(t, k, q, cur)
  return t > cur[1] or (t == cur[1] and (k > cur[2] or (k == cur[2] and q > cur[3])))
end

for index, item in ipairs(cmsgpack.unpack(ARGV[6])) do
  local key = KEYS[index + 1]
  local pexpire = item[3]
  if item[1] == 1 then
    local ops = layouts[item[2]]
    local keep, period = item[4], item[6]
    local created, prune_at = false, nil
    -- one tile (the common case: an entity's events of a batch share a tile) is read with the markers
    local single = #item == 8
    local marks
    if single then
      marks = redis.call('HMGET', key, '~m', '~t', item[7])
    else
      marks = redis.call('HMGET', key, '~m', '~t')
    end
    local newest = tonumber(marks[2])
    local stored_newest = newest
    if not marks[1] then
      stored_newest = nil
      local now = redis.call('TIME')
      redis.call('HSET', key, '~m', now[1] .. string.format('%06d', tonumber(now[2])))
      newest = nil
      for _, f in ipairs(redis.call('HKEYS', key)) do
        local start = tonumber(f)
        if start and (newest == nil or start > newest) then newest = start end
      end
    end
    local old_newest, bump = newest, false
    for j = 7, #item, 2 do
      local field, packed = item[j], item[j + 1]
      local start = tonumber(field)
      if old_newest and start < old_newest then bump = true end
      if newest == nil or start > newest then newest = start end
      local cur
      if single then cur = marks[3] else cur = redis.call('HGET', key, field) end
      if cur then
        packed = cmsgpack.pack(merge(ops, cmsgpack.unpack(cur), cmsgpack.unpack(packed)))
      else
        created = true
        if period > 0 and start % period == 0 and (prune_at == nil or start > prune_at) then prune_at = start end
      end
      redis.call('HSET', key, field, packed)
    end
    -- creating a tile at a multiple of `period` drops the tiles no read can reach from there on
    -- (older than it minus keep_ms). Keyed to the created tile, not to what the hash holds, the
    -- kept set is the same however the events were batched (so replays after a crash agree).
    if prune_at then
      for _, f in ipairs(redis.call('HKEYS', key)) do
        local start = tonumber(f)  -- nil for the '~' markers
        if start and start < prune_at - keep then
          redis.call('HDEL', key, f)
          bump = true
        end
      end
    end
    if bump then redis.call('HINCRBY', key, '~m', 1) end
    if newest ~= stored_newest then redis.call('HSET', key, '~t', string.format('%d', newest)) end
    if pexpire > 0 and (created or item[5] == 1) then redis.call('PEXPIRE', key, pexpire) end
  else
    local cur = redis.call('GET', key)
    local refresh = pexpire > 0 and (item[4] == 1 or not cur)
    if (not cur) or newer(item[5], item[6], item[7], cmsgpack.unpack(cur)) then
      if refresh then
        redis.call('SET', key, item[8], 'PX', pexpire)
      else
        redis.call('SET', key, item[8], 'KEEPTTL')
      end
    elseif refresh then
      redis.call('PEXPIRE', key, pexpire)
    end
  end
end

redis.call('HSET', KEYS[1], 'offset', ARGV[3], 'watermark', ARGV[4])
local now = redis.call('TIME')
return {'applied', ARGV[3], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)}
