-- Reserve one request's bound against every counter, or against none.
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: now_ms, res_id, expiry_ms, n, "a1,...,a7", epoch, want_used,
--       then per counter "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms,keep_limits,l1,...,l7"
-- Returns what reserve_one (common.lua) returns.
local n = tonumber(ARGV[4])
local hs, ps = {}, {}
for i = 1, n do
  hs[i] = KEYS[3 + i]
  ps[i] = nums(ARGV[7 + i])
end
return reserve_one(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[5], ARGV[6],
  ARGV[7] == '1', hs, ps)
