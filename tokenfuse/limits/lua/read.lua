-- Current figures of each counter, after dropping expired reservations and buckets.
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: now_ms, n, then per counter "bucket_ms,nbuckets,..."
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local out = {}
purge(KEYS[1], KEYS[2], now)
for i = 1, n do
  local h = KEYS[3 + i]
  local p = nums(ARGV[2 + i])
  roll(h, now, p[1], p[2])
  out[#out + 1] = redis.call('HMGET', h, unpack(FIELDS))
end
return out
