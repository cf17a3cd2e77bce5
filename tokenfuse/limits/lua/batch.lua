-- Settles that waited on this replica, then (optionally) one reserve, in one call:
-- the request path's only round trip (docs/limits.md, "How settles travel").
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..m
-- ARGV: m, then per counter "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms,keep_limits,l1,...,l7",
--       then ns (how many settles) and per settle: res_id, now_ms, want, "u1,...,u7",
--       "a1,...,a7", "i1,i2,..." (its counters, 1-based indexes into KEYS[4..]),
--       then optionally the reserve: now_ms, res_id, expiry_ms, "a1,...,a7", epoch,
--       want_used, n (its counters are the first n).
-- Settles are applied first and whatever the reserve answers (refused, or the
-- epoch changed): each is what settle.lua would do on its own. A settle only
-- lowers what it replaces, so applying it before the reserve's check is what
-- the same settle sent earlier would have done.
-- Returns {per settle: its figures (want) or {}, the reserve's answer or {}}.
local m = tonumber(ARGV[1])
local specs = {}
for i = 1, m do specs[i] = nums(ARGV[1 + i]) end
local k = 2 + m
local ns = tonumber(ARGV[k])
k = k + 1
local settled = {}
for s = 1, ns do
  local hs, ps = {}, {}
  for _, i in ipairs(nums(ARGV[k + 5])) do
    hs[#hs + 1] = KEYS[3 + i]
    ps[#ps + 1] = specs[i]
  end
  settled[s] = settle_one(KEYS[1], KEYS[2], ARGV[k], tonumber(ARGV[k + 1]), ARGV[k + 2] == '1',
    nums(ARGV[k + 3]), nums(ARGV[k + 4]), hs, ps)
  k = k + 6
end
local reserved = {}
if k <= #ARGV then
  local n = tonumber(ARGV[k + 6])
  local hs, ps = {}, {}
  for i = 1, n do
    hs[i] = KEYS[3 + i]
    ps[i] = specs[i]
  end
  reserved = reserve_one(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[k]), ARGV[k + 1], ARGV[k + 2], ARGV[k + 3],
    ARGV[k + 4], ARGV[k + 5] == '1', hs, ps)
end
return {settled, reserved}
