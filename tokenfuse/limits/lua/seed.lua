-- Load spend rebuilt from the ledger into the counters.
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: now_ms, n, epoch, then per counter two arguments:
--       "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms" and
--       "idx:v1,...,v7;idx:v1,...,v7" (idx is the bucket, 0 for fixed windows)
-- With the epoch marker present, only counters that do not exist yet are
-- created (several replicas starting at once seed each counter exactly once).
-- With the marker missing and an epoch given, the store lost its counters: the
-- ledger's spend is added to every counter, including those that settles and
-- re-held reservations created since the loss (their figures are not in the
-- ledger, or are there twice, which errs towards refusing), and the marker is
-- set. With the marker missing and no epoch, nothing is written.
-- Returns {counters created or added to, 1 if this call set the marker else 0},
-- or {-1, 0} when the marker is missing and no epoch was given.
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local epoch = ARGV[3]
local fresh = false
if redis.call('EXISTS', KEYS[3]) == 0 then
  if epoch == '' then return {-1, 0} end
  fresh = true
end
local created = 0
for i = 1, n do
  local h = KEYS[3 + i]
  local p = nums(ARGV[2 + 2 * i])
  if fresh or redis.call('EXISTS', h) == 0 then
    local marked = redis.call('HEXISTS', h, 'e') == 1
    local total = {0, 0, 0, 0, 0, 0, 0}
    for item in string.gmatch(ARGV[3 + 2 * i], '[^;]+') do
      local idx, rest = string.match(item, '^(-?%d+):(.*)$')
      local vals = nums(rest)
      if p[1] > 0 then add_bucket(h, tonumber(idx), vals) end
      for d = 1, N do total[d] = total[d] + vals[d] end
    end
    redis.call('HSET', h, 'seeded', fmt(now))
    for d = 1, N do
      if total[d] ~= 0 or not fresh then redis.call('HINCRBY', h, 's' .. d, fmt(total[d])) end
    end
    roll(h, now, p[1], p[2])
    expire(h, p[3], p[4], marked)
    created = created + 1
  end
end
if fresh then redis.call('SET', KEYS[3], epoch) end
return {created, fresh and 1 or 0}
