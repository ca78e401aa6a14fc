-- Write the tiles of one tile hash (materialization) with fresh reader-cache markers, atomically.
--
-- KEYS[1]   the tile hash
-- ARGV[1]   the newest tile start among the tiles written
-- ARGV[2]   PEXPIRE in ms
-- ARGV[3..] tile start, packed stats, tile start, packed stats, ...
-- Returns 1.
--
-- The markers are the ones apply.lua keeps (see feature_store/online/tile_cache.py): '~m' becomes a
-- fresh version from the server clock in microseconds (above the value it replaces), so a reader that
-- cached the hash before reads it whole again; '~t' the newest tile present: the stored '~t' (never
-- below a tile present while '~m' exists) or ARGV[1], whichever is newer. A hash holding tiles but no
-- '~m' (written by a version that deleted the markers) is scanned for its newest tile, as apply.lua does.
-- One script, so no reader sees the new tiles under the old version, and a crash leaves no hash half
-- marked.

local key = KEYS[1]
local marks = redis.call('HMGET', key, '~m', '~t')
local newest = tonumber(ARGV[1])
if marks[1] and marks[2] then
  newest = math.max(newest, tonumber(marks[2]))
elseif redis.call('EXISTS', key) == 1 then
  for _, f in ipairs(redis.call('HKEYS', key)) do
    local start = tonumber(f)  -- nil for the '~' markers
    if start and start > newest then newest = start end
  end
end
for i = 3, #ARGV, 1000 do  -- in slices of 500 fields: unpack is bounded by the Lua stack
  redis.call('HSET', key, unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local now = redis.call('TIME')
local version = now[1] .. string.format('%06d', tonumber(now[2]))
if marks[1] and tonumber(marks[1]) >= tonumber(version) then version = string.format('%d', tonumber(marks[1]) + 1) end
redis.call('HSET', key, '~m', version, '~t', string.format('%d', newest))
redis.call('PEXPIRE', key, ARGV[2])
return 1
