-- Replace a reservation by what the request actually used (all zeros: release).
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: now_ms, res_id, want, n, "u1,...,u7", "a1,...,a7" (what was reserved),
--       then per counter "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms"
-- If the reservation expired and was charged, the charge is replaced by the usage.
-- Returns, when want = 1, each counter's figures (s1..s7, r1..r7) after the update.
local now = tonumber(ARGV[1])
local id = ARGV[2]
local want = ARGV[3] == '1'
local n = tonumber(ARGV[4])
local u = nums(ARGV[5])
-- 'H': still held; 'C': expired and charged at the reserved amounts; nil: lost or
-- forgotten, so nothing is held and the usage counts in full; 'S': settled already.
local mode = nil
local x = redis.call('HGET', KEYS[2], id)
if x then
  mode = string.sub(x, 1, 1)
end
if mode == 'H' or mode == 'C' then
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[1], id)
elseif mode == nil then
  -- No reservation to drop (the store lost it, or it was forgotten): count the
  -- usage in full, and leave a mark so that a replica re-holding its
  -- reservations after a data loss does not hold this one again.
  redis.call('HSET', KEYS[2], id, 'S')
  redis.call('ZADD', KEYS[1], fmt(now + CHARGED_KEEP_MS), id)
end
local a = nums(ARGV[6])
local delta = u
if mode == 'S' then return {} end
if mode == 'C' then
  delta = {}
  for d = 1, N do delta[d] = u[d] - a[d] end
end
local out = {}

for i = 1, n do
  local h = KEYS[3 + i]
  local p = nums(ARGV[6 + i])
  local v, marked = figures(h)
  local args = {}
  for d = 1, N do
    if delta[d] ~= 0 then
      args[#args + 1] = 's' .. d
      args[#args + 1] = fmt(v[d] + delta[d])
    end
    if mode == 'H' and a[d] ~= 0 then
      args[#args + 1] = RFIELDS[d]
      args[#args + 1] = fmt(math.max(0, v[N + d] - a[d]))
    end
  end
  if #args > 0 then redis.call('HSET', h, unpack(args)) end
  if p[1] > 0 then
    roll(h, now, p[1], p[2])
    add_bucket(h, math.floor(now / p[1]), delta)
  end
  expire(h, p[3], p[4], marked)
  if want then out[#out + 1] = redis.call('HMGET', h, unpack(FIELDS)) end
end
return out
