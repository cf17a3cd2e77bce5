-- Load spend rebuilt from the ledger into counters that do not exist yet.
-- Existence is checked inside the script, so of several replicas starting at
-- once exactly one seeds each counter (SET NX semantics).
-- KEYS: hash1, zset1, ...
-- ARGV: now_ms, n, then per entry: bucket_ms, nbuckets, pexpireat_ms, pexpire_ms,
--       data = "idx:v1,...,v7;idx:v1,...,v7" (idx is the bucket, 0 for fixed windows)
-- Returns how many counters were created.
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local created = 0
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local o = 2 + (i - 1) * 5
  if redis.call('EXISTS', h) == 0 then
    local bucket, nb = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
    for item in string.gmatch(ARGV[o + 5], '[^;]+') do
      local idx, rest = string.match(item, '^(-?%d+):(.*)$')
      local vals = split(rest)
      if bucket > 0 then add_bucket(h, tonumber(idx), vals) end
      incr(h, 's', vals, false)
    end
    redis.call('HSET', h, 'seeded', now)
    roll(h, now, bucket, nb)
    expire(h, z, tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4]))
    created = created + 1
  end
end
return created
