-- Write the tiles of tile hashes (materialization) with fresh reader-cache markers, atomically.
--
-- KEYS      the tile hashes (one hash tag: one slot on a Redis Cluster)
-- ARGV      per key, in KEYS order: its tile count n, the newest tile start among its tiles, PEXPIRE in ms,
--           then n pairs tile start, packed stats
-- Returns the number of keys written.
--
-- The markers are the ones apply.lua keeps (see feature_store/online/tile_cache.py): '~m' becomes a
-- fresh version from the server clock in microseconds (above the value it replaces), so a reader that
-- cached the hash before reads it whole again; '~t' the newest tile present: the stored '~t' (never
-- below a tile present while '~m' exists) or the newest tile written, whichever is newer. A hash holding
-- tiles but no '~m' (written by a version that deleted the markers) is scanned for its newest tile, as
-- apply.lua does. One script, so no reader sees the new tiles under the old version, and a crash leaves
-- no hash half marked.

local now = redis.call('TIME')
local fresh = tonumber(now[1]) * 1000000 + tonumber(now[2])
local a = 1
for _, key in ipairs(KEYS) do
  local n, newest, pexpire = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2]
  local first, last = a + 3, a + 2 + 2 * n
  local marks = redis.call('HMGET', key, '~m', '~t')
  if marks[1] and marks[2] then
    newest = math.max(newest, tonumber(marks[2]))
  elseif redis.call('EXISTS', key) == 1 then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      local start = tonumber(f)  -- nil for the '~' markers
      if start and start > newest then newest = start end
    end
  end
  for i = first, last, 1000 do  -- in slices of 500 tiles: unpack is bounded by the Lua stack
    redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, last)))
  end
  local version = fresh
  if marks[1] and tonumber(marks[1]) >= version then version = tonumber(marks[1]) + 1 end
  redis.call('HSET', key, '~m', string.format('%d', version), '~t', string.format('%d', newest))
  redis.call('PEXPIRE', key, pexpire)
  a = last + 1
end
return #KEYS
