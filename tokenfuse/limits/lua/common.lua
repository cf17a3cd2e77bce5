-- Shared by every tokenfuse counter script (prepended by redis.py).
-- A counter hash holds s1..s7 (spent), r1..r7 (reserved), x:<id> (a held
-- reservation's amounts, comma-separated), and for rolling windows b<i>:<d>
-- (bucket i's spend) with lo/hi (the oldest/newest bucket held). Increments
-- are passed to HINCRBY as the strings the client sent: Lua numbers are
-- doubles and would be printed in exponent form above 1e14.
local N = 7
local FIELDS = {'s1', 's2', 's3', 's4', 's5', 's6', 's7', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7'}

local function split(s)
  local t = {}
  for x in string.gmatch(s, '[^,]+') do t[#t + 1] = x end
  return t
end

local function incr(h, prefix, vals, negate)
  for d = 1, N do
    local v = vals[d]
    if v and v ~= '0' and v ~= false then
      if negate then v = '-' .. v end
      redis.call('HINCRBY', h, prefix .. d, v)
    end
  end
end

local function figures(h)
  return redis.call('HMGET', h, unpack(FIELDS))
end

local function purge(h, z, now)
  local ids = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #ids == 0 then return end
  for _, id in ipairs(ids) do
    local x = redis.call('HGET', h, 'x:' .. id)
    if x then
      incr(h, 'r', split(x), true)
      redis.call('HDEL', h, 'x:' .. id)
    end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end

local function bucket_fields(i)
  local f = {}
  for d = 1, N do f[d] = 'b' .. i .. ':' .. d end
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
    incr(h, 's', redis.call('HMGET', h, unpack(f)), true)
    redis.call('HDEL', h, unpack(f))
  end
  redis.call('HSET', h, 'lo', new_lo)
end

local function add_bucket(h, idx, vals)
  local lo = tonumber(redis.call('HGET', h, 'lo'))
  local hi = tonumber(redis.call('HGET', h, 'hi'))
  if not lo or idx < lo then redis.call('HSET', h, 'lo', idx) end
  if not hi or idx > hi then redis.call('HSET', h, 'hi', idx) end
  for d = 1, N do
    local v = vals[d]
    if v and v ~= '0' then redis.call('HINCRBY', h, 'b' .. idx .. ':' .. d, v) end
  end
end

local function expire(h, z, at, rel)
  if at > 0 then
    redis.call('PEXPIREAT', h, at)
    redis.call('PEXPIREAT', z, at)
  elseif rel > 0 then
    redis.call('PEXPIRE', h, rel)
    redis.call('PEXPIRE', z, rel)
  end
end
