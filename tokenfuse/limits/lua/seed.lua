-- Load spend rebuilt from the ledger into counters that do not exist yet.
-- Existence is checked inside the script, so of several replicas starting at
-- once exactly one seeds each counter (SET NX semantics).
-- KEYS: hash1, zset1, ...
-- ARGV: now_ms, n, then per entry two arguments:
--       "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms" and
--       "idx:v1,...,v7;idx:v1,...,v7" (idx is the bucket, 0 for fixed windows)
-- Returns how many counters were created.
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local created = 0
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local p = nums(ARGV[1 + 2 * i])
  if redis.call('EXISTS', h) == 0 then
    for item in string.gmatch(ARGV[2 + 2 * i], '[^;]+') do
      local idx, rest = string.match(item, '^(-?%d+):(.*)$')
      local vals = nums(rest)
      if p[1] > 0 then add_bucket(h, tonumber(idx), vals) end
      incr(h, 's', vals, 1)
    end
    redis.call('HSET', h, 'seeded', fmt(now))
    roll(h, now, p[1], p[2])
    expire(h, z, p[3], p[4])
    created = created + 1
  end
end
return created
