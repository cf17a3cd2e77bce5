-- Shared by every tokenfuse counter script (prepended by redis.py).
-- A counter hash holds s1..s7 (spent), r1..r7 (reserved), x:<id> (a held
-- reservation's amounts, comma-separated), L (a session's caps), and for
-- rolling windows b<i>:<d> (bucket i's spend) with lo/hi (the oldest/newest
-- bucket held). Lua numbers are doubles: integers are exact below 2^53, and
-- are written back with %d, never with tostring (which would print 1e+15).
local N = 7
local FIELDS = {'s1', 's2', 's3', 's4', 's5', 's6', 's7', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7'}

local function fmt(x)
  return string.format('%d', x)
end

local function nums(s)
  local t = {}
  for x in string.gmatch(s, '[^,]+') do t[#t + 1] = tonumber(x) end
  return t
end

local function figures(h)
  local raw = redis.call('HMGET', h, unpack(FIELDS))
  local v = {}
  for k = 1, 2 * N do v[k] = tonumber(raw[k]) or 0 end
  return v
end

-- Add (sign 1) or subtract (sign -1) a vector to s<d> or r<d> in place.
local function incr(h, prefix, vals, sign)
  for d = 1, N do
    local v = tonumber(vals[d])
    if v and v ~= 0 then redis.call('HINCRBY', h, prefix .. d, fmt(sign * v)) end
  end
end

-- Drop reservations whose TTL has passed (their replica died or forgot them).
local function purge(h, z, now)
  local ids = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #ids == 0 then return end
  for _, id in ipairs(ids) do
    local x = redis.call('HGET', h, 'x:' .. id)
    if x then
      incr(h, 'r', nums(x), -1)
      redis.call('HDEL', h, 'x:' .. id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end

local function bucket_fields(i)
  local f = {}
  for d = 1, N do f[d] = 'b' .. fmt(i) .. ':' .. d end
  return f
end

-- Drop buckets that have left a rolling window from the spent totals.
local function roll(h, now, bucket, nb)
  if bucket <= 0 then return end
  local lo = tonumber(redis.call('HGET', h, 'lo'))
  if not lo then return end
  local new_lo = math.floor(now / bucket) - nb
  if lo >= new_lo then return end
  local hi = tonumber(redis.call('HGET', h, 'hi')) or lo
  for i = lo, math.min(hi, new_lo - 1) do
    local f = bucket_fields(i)
    incr(h, 's', redis.call('HMGET', h, unpack(f)), -1)
    redis.call('HDEL', h, unpack(f))
  end
  redis.call('HSET', h, 'lo', fmt(new_lo))
end

local function add_bucket(h, idx, vals)
  local lo = tonumber(redis.call('HGET', h, 'lo'))
  local hi = tonumber(redis.call('HGET', h, 'hi'))
  if not lo or idx < lo then redis.call('HSET', h, 'lo', fmt(idx)) end
  if not hi or idx > hi then redis.call('HSET', h, 'hi', fmt(idx)) end
  for d = 1, N do
    if vals[d] ~= 0 then redis.call('HINCRBY', h, 'b' .. fmt(idx) .. ':' .. d, fmt(vals[d])) end
  end
end

local function expire(h, z, at, rel)
  if at > 0 then
    redis.call('PEXPIREAT', h, fmt(at))
    redis.call('PEXPIREAT', z, fmt(at))
  elseif rel > 0 then
    redis.call('PEXPIRE', h, fmt(rel))
    redis.call('PEXPIRE', z, fmt(rel))
  end
end
