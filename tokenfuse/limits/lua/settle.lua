-- Replace a reservation by what the request actually used (all zeros: release).
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: now_ms, res_id, want, n, "u1,...,u7", "a1,...,a7" (what was reserved),
--       then per counter "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms"
-- If the reservation expired and was charged, the charge is replaced by the usage.
-- Returns, when want = 1, each counter's figures (s1..s7, r1..r7) after the update.
local n = tonumber(ARGV[4])
local hs, ps = {}, {}
for i = 1, n do
  hs[i] = KEYS[3 + i]
  ps[i] = nums(ARGV[6 + i])
end
return settle_one(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[1]), ARGV[3] == '1', nums(ARGV[5]), nums(ARGV[6]),
  hs, ps)
