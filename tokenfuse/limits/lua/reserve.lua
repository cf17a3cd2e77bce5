-- Reserve one request's bound against every entry, or against none.
-- KEYS: hash1, zset1, hash2, zset2, ...
-- ARGV: now_ms, res_id, expiry_ms, n, "a1,...,a7",
--       then per entry "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms,keep_limits,l1,...,l7"
-- Returns {0} when admitted, else {entry, dim, spent, reserved} (1-based).
local now = tonumber(ARGV[1])
local id = ARGV[2]
local expiry = ARGV[3]
local n = tonumber(ARGV[4])
local a = nums(ARGV[5])
local specs, figs = {}, {}

for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local p = nums(ARGV[5 + i])
  specs[i] = p
  purge(h, z, now)
  roll(h, now, p[1], p[2])
  local v = figures(h)
  figs[i] = v
  for d = 1, N do
    local cap = p[5 + d]
    if cap >= 0 and v[d] + v[N + d] + a[d] > cap then
      return {i, d, fmt(v[d]), fmt(v[N + d])}
    end
  end
end

for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local p, v = specs[i], figs[i]
  local args = {'x:' .. id, ARGV[5]}
  for d = 1, N do
    if a[d] ~= 0 then
      args[#args + 1] = 'r' .. d
      args[#args + 1] = fmt(v[N + d] + a[d])
    end
  end
  if p[5] == 1 then
    local lim = {}
    for d = 1, N do lim[d] = fmt(p[5 + d]) end
    args[#args + 1] = 'L'
    args[#args + 1] = table.concat(lim, ',')
  end
  redis.call('HSET', h, unpack(args))
  redis.call('ZADD', z, expiry, id)
  expire(h, z, p[3], p[4])
end
return {0}
