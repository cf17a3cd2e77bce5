-- Replace a reservation by what the request actually used (all zeros: release).
-- KEYS: hash1, zset1, ...
-- ARGV: now_ms, res_id, want, n, "u1,...,u7",
--       then per entry "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms"
-- Returns, when want = 1, each entry's 14 figures (s1..s7, r1..r7) after the update.
local now = tonumber(ARGV[1])
local id = ARGV[2]
local want = ARGV[3] == '1'
local n = tonumber(ARGV[4])
local u = nums(ARGV[5])
local out = {}

for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local p = nums(ARGV[5 + i])
  local x = redis.call('HGET', h, 'x:' .. id)
  local held = x and nums(x) or nil
  local v = figures(h)
  local args = {}
  for d = 1, N do
    if u[d] ~= 0 then
      args[#args + 1] = 's' .. d
      args[#args + 1] = fmt(v[d] + u[d])
    end
    if held and held[d] ~= 0 then
      args[#args + 1] = 'r' .. d
      args[#args + 1] = fmt(v[N + d] - held[d])
    end
  end
  if #args > 0 then redis.call('HSET', h, unpack(args)) end
  if x then
    redis.call('HDEL', h, 'x:' .. id)
    redis.call('ZREM', z, id)
  end
  if p[1] > 0 then
    roll(h, now, p[1], p[2])
    add_bucket(h, math.floor(now / p[1]), u)
  end
  expire(h, z, p[3], p[4])
  if want then out[#out + 1] = redis.call('HMGET', h, unpack(FIELDS)) end
end
return out
