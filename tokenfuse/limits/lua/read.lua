-- Current figures of each entry, after dropping expired reservations and buckets.
-- KEYS: hash1, zset1, ...   ARGV: now_ms, n, then per entry "bucket_ms,nbuckets"
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local p = nums(ARGV[2 + i])
  purge(h, z, now)
  roll(h, now, p[1], p[2])
  out[#out + 1] = redis.call('HMGET', h, unpack(FIELDS))
end
return out
