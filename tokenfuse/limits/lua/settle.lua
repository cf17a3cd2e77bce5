-- Replace a reservation by what the request actually used (all zeros: release).
-- KEYS: hash1, zset1, ...
-- ARGV: now_ms, res_id, want, n, u1..u7, then per entry: bucket_ms, nbuckets, pexpireat_ms, pexpire_ms
-- Returns, when want = 1, each entry's 14 figures (s1..s7, r1..r7) after the update.
local now = tonumber(ARGV[1])
local id = ARGV[2]
local want = ARGV[3] == '1'
local n = tonumber(ARGV[4])
local u = {}
for d = 1, N do u[d] = ARGV[4 + d] end
local base = 4 + N
local stride = 4
local out = {}

for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local o = base + (i - 1) * stride
  local bucket, nb = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local x = redis.call('HGET', h, 'x:' .. id)
  if x then
    incr(h, 'r', split(x), true)
    redis.call('HDEL', h, 'x:' .. id)
    redis.call('ZREM', z, id)
  end
  purge(h, z, now)
  if bucket > 0 then
    roll(h, now, bucket, nb)
    add_bucket(h, math.floor(now / bucket), u)
  end
  incr(h, 's', u, false)
  expire(h, z, tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]))
  if want then out[#out + 1] = figures(h) end
end
return out
