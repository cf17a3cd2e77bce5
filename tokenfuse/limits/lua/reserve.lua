-- Reserve one request's bound against every entry, or against none.
-- KEYS: hash1, zset1, hash2, zset2, ...
-- ARGV: now_ms, res_id, expiry_ms, n, a1..a7,
--       then per entry: bucket_ms, nbuckets, pexpireat_ms, pexpire_ms, keep_limits, l1..l7
-- Returns {0} when admitted, else {entry, dim, spent, reserved} (1-based).
local now = tonumber(ARGV[1])
local id = ARGV[2]
local expiry = ARGV[3]
local n = tonumber(ARGV[4])
local a = {}
local an = {}
for d = 1, N do
  a[d] = ARGV[4 + d]
  an[d] = tonumber(a[d])
end
local base = 4 + N
local stride = 5 + N

for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local o = base + (i - 1) * stride
  purge(h, z, now)
  roll(h, now, tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2]))
  local v = figures(h)
  for d = 1, N do
    local cap = tonumber(ARGV[o + 5 + d])
    if cap >= 0 then
      local spent = tonumber(v[d]) or 0
      local held = tonumber(v[N + d]) or 0
      if spent + held + an[d] > cap then
        return {i, d, v[d] or '0', v[N + d] or '0'}
      end
    end
  end
end

local amounts = table.concat(a, ',')
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local o = base + (i - 1) * stride
  incr(h, 'r', a, false)
  redis.call('HSET', h, 'x:' .. id, amounts)
  redis.call('ZADD', z, expiry, id)
  if ARGV[o + 5] == '1' then
    local lim = {}
    for d = 1, N do lim[d] = ARGV[o + 5 + d] end
    redis.call('HSET', h, 'L', table.concat(lim, ','))
  end
  expire(h, z, tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]))
end
return {0}
