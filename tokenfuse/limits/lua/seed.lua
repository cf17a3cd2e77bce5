-- Load spend rebuilt from the ledger into counters that do not exist yet.
-- Existence is checked inside the script, so of several replicas starting at
-- once exactly one seeds each counter (SET NX semantics).
-- KEYS: held zset, held info hash, counter hash 1..n
-- ARGV: now_ms, n, then per counter two arguments:
--       "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms" and
--       "idx:v1,...,v7;idx:v1,...,v7" (idx is the bucket, 0 for fixed windows)
-- Returns how many counters were created.
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local created = 0
for i = 1, n do
  local h = KEYS[2 + i]
  local p = nums(ARGV[1 + 2 * i])
  if redis.call('EXISTS', h) == 0 then
    local total = {0, 0, 0, 0, 0, 0, 0}
    for item in string.gmatch(ARGV[2 + 2 * i], '[^;]+') do
      local idx, rest = string.match(item, '^(-?%d+):(.*)$')
      local vals = nums(rest)
      if p[1] > 0 then add_bucket(h, tonumber(idx), vals) end
      for d = 1, N do total[d] = total[d] + vals[d] end
    end
    local args = {'seeded', fmt(now)}
    for d = 1, N do
      args[#args + 1] = 's' .. d
      args[#args + 1] = fmt(total[d])
    end
    redis.call('HSET', h, unpack(args))
    roll(h, now, p[1], p[2])
    expire(h, p[3], p[4], false)
    created = created + 1
  end
end
return created
