-- Reserve one request's bound against every counter, or against none.
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: now_ms, res_id, expiry_ms, n, "a1,...,a7", epoch, want_used,
--       then per counter "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms,keep_limits,l1,...,l7"
-- Returns {0} when admitted (with want_used = 1: {0, "used1,...,used7" per
-- counter}, spent + reserved after this reservation), else
-- {counter, dim, spent, reserved} (1-based); {-1} when the epoch marker is
-- missing (the counters were lost and must be seeded again), {-2, epoch} when
-- it is not the epoch the caller knows (another replica re-seeded them).
local now = tonumber(ARGV[1])
local id = ARGV[2]
local n = tonumber(ARGV[4])
local a = nums(ARGV[5])
local epoch = redis.call('GET', KEYS[3])
if not epoch then return {-1} end
if epoch ~= ARGV[6] then return {-2, epoch} end
local specs, figs, marks = {}, {}, {}

purge(KEYS[1], KEYS[2], now)
for i = 1, n do
  local h = KEYS[3 + i]
  local p = nums(ARGV[7 + i])
  specs[i] = p
  roll(h, now, p[1], p[2])
  local v, marked = figures(h)
  figs[i], marks[i] = v, marked
  for d = 1, N do
    local cap = p[5 + d]
    if cap >= 0 and v[d] + v[N + d] + a[d] > cap then
      return {i, d, fmt(v[d]), fmt(v[N + d])}
    end
  end
end

local where = {'H', ARGV[5]}
local out = {0}
for i = 1, n do
  local h = KEYS[3 + i]
  local p, v = specs[i], figs[i]
  local args = {}
  for d = 1, N do
    if a[d] ~= 0 then
      args[#args + 1] = RFIELDS[d]
      args[#args + 1] = fmt(v[N + d] + a[d])
    end
  end
  if p[5] == 1 then
    local lim = {}
    for d = 1, N do lim[d] = fmt(p[5 + d]) end
    args[#args + 1] = 'L'
    args[#args + 1] = table.concat(lim, ',')
  end
  if #args > 0 then redis.call('HSET', h, unpack(args)) end
  expire(h, p[3], p[4], marks[i])
  where[#where + 1] = fmt(p[1]) .. ',' .. fmt(p[2]) .. ',' .. h
  if ARGV[7] == '1' then
    local used = {}
    for d = 1, N do used[d] = fmt(v[d] + v[N + d] + a[d]) end
    out[#out + 1] = table.concat(used, ',')
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], id)
redis.call('HSET', KEYS[2], id, table.concat(where, '\n'))
return out
