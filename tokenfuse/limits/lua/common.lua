-- Shared by every tokenfuse counter script (prepended by redis.py).
--
-- A counter hash holds s1..s7 (spent), r1..r7 (reserved), e (set once its
-- expiry is set), L (a session's caps), and for rolling windows b<i>:<d>
-- (bucket i's spend) with lo/hi (the oldest and newest bucket held).
-- Reservations in flight live in one sorted set (KEYS[1], id scored by
-- expiry) and one hash (KEYS[2], id -> "H\namounts\nbucket_ms,nb,hash1\n..."),
-- so purging expired ones costs one call when there are none. KEYS[3] is the
-- epoch marker, written only when the counters are seeded from the ledger: a
-- Redis that lost its data has no marker, and reserve refuses to count on it.
-- A settle that finds no reservation leaves "S" (settled) under its id, so a
-- replica re-holding its reservations after a data loss skips that one. An expired
-- reservation is charged: its amounts move from reserved to spent (nobody knows
-- what the provider billed for it) and it stays a day as "C\n..." so that a
-- late settle can replace the charge by the actual usage.
-- Lua numbers are doubles: integers are exact below 2^53, and are written
-- back with %d, never with tostring (which would print 1e+15).
local N = 7
local FIELDS = {'s1', 's2', 's3', 's4', 's5', 's6', 's7', 'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7', 'e'}
local RFIELDS = {'r1', 'r2', 'r3', 'r4', 'r5', 'r6', 'r7'}
local CHARGED_KEEP_MS = 86400000

local function fmt(x)
  return string.format('%d', x)
end

local function nums(s)
  local t = {}
  for x in string.gmatch(s, '[^,]+') do t[#t + 1] = tonumber(x) end
  return t
end

-- s1..s7, r1..r7 as numbers, and whether the expiry marker is set.
local function figures(h)
  local raw = redis.call('HMGET', h, unpack(FIELDS))
  local v = {}
  for k = 1, 2 * N do v[k] = tonumber(raw[k]) or 0 end
  return v, raw[2 * N + 1] ~= false
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
    local raw = redis.call('HMGET', h, unpack(f))
    for d = 1, N do
      local v = tonumber(raw[d])
      if v and v ~= 0 then redis.call('HINCRBY', h, 's' .. d, fmt(-v)) end
    end
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

-- Absolute expiries (calendar windows) are set once; relative ones (sessions,
-- rolling windows) are pushed back on every write.
local function lines(s)
  local t = {}
  for x in string.gmatch(s, '[^\n]+') do t[#t + 1] = x end
  return t
end

-- Charge an expired reservation to the counters that held it.
local function charge(parts, now)
  local a = nums(parts[2])
  for k = 3, #parts do
    local bucket, nb, h = string.match(parts[k], '^(%d+),(%d+),(.*)$')
    bucket, nb = tonumber(bucket), tonumber(nb)
    if redis.call('EXISTS', h) == 1 then
      roll(h, now, bucket, nb)
      local raw = redis.call('HMGET', h, unpack(RFIELDS))
      local args = {}
      for d = 1, N do
        if a[d] ~= 0 then
          args[#args + 1] = RFIELDS[d]
          args[#args + 1] = fmt(math.max(0, (tonumber(raw[d]) or 0) - a[d]))
          redis.call('HINCRBY', h, 's' .. d, fmt(a[d]))
        end
      end
      if #args > 0 then redis.call('HSET', h, unpack(args)) end
      if bucket > 0 then add_bucket(h, math.floor(now / bucket), a) end
    end
  end
end

-- Charge reservations whose TTL has passed (their replica died or lost track),
-- and forget charged ones nobody settled within a day.
local function purge(held, info, now)
  local ids = redis.call('ZRANGEBYSCORE', held, '-inf', now, 'LIMIT', 0, 200)
  for _, id in ipairs(ids) do
    local x = redis.call('HGET', info, id)
    if x and string.sub(x, 1, 1) == 'H' then
      charge(lines(x), now)
      redis.call('HSET', info, id, 'C' .. string.sub(x, 2))
      redis.call('ZADD', held, fmt(now + CHARGED_KEEP_MS), id)
    else
      redis.call('HDEL', info, id)
      redis.call('ZREM', held, id)
    end
  end
end

local function expire(h, at, rel, marked)
  if at > 0 then
    if not marked then
      redis.call('PEXPIREAT', h, fmt(at))
      redis.call('HSET', h, 'e', '1')
    end
  elseif rel > 0 then
    redis.call('PEXPIRE', h, fmt(rel))
  end
end

-- Replace reservation `id` by usage `u` on counters `hs` (hash names) with
-- parsed specs `ps` ("bucket_ms,nbuckets,pexpireat_ms,pexpire_ms,..."); `a` is
-- what was reserved (all zeros in `u`: a release). If the reservation expired
-- and was charged, the charge is replaced by the usage; if the store does not
-- know it (lost or forgotten), the usage counts in full and "S" marks the id.
-- Returns each counter's figures after the update when `want`, else {}; {} too
-- when the id was settled already (nothing changes).
local function settle_one(held, info, id, now, want, u, a, hs, ps)
  -- 'H': still held; 'C': expired and charged at the reserved amounts; nil: lost or
  -- forgotten, so nothing is held and the usage counts in full; 'S': settled already.
  local mode = nil
  local x = redis.call('HGET', info, id)
  if x then
    mode = string.sub(x, 1, 1)
  end
  if mode == 'S' then return {} end
  if mode == 'H' or mode == 'C' then
    redis.call('HDEL', info, id)
    redis.call('ZREM', held, id)
  else
    -- No reservation to drop (the store lost it, or it was forgotten): count the
    -- usage in full, and leave a mark so that a replica re-holding its
    -- reservations after a data loss does not hold this one again.
    redis.call('HSET', info, id, 'S')
    redis.call('ZADD', held, fmt(now + CHARGED_KEEP_MS), id)
  end
  local delta = u
  if mode == 'C' then
    delta = {}
    for d = 1, N do delta[d] = u[d] - a[d] end
  end
  local out = {}
  for i = 1, #hs do
    local h, p = hs[i], ps[i]
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
end

-- Reserve amounts `astr` ("a1,...,a7") under `id` against counters `hs` with
-- parsed specs `ps` ("bucket_ms,nbuckets,pexpireat_ms,pexpire_ms,keep_limits,
-- l1,...,l7"), on all of them or on none, provided the epoch marker is `epoch`.
-- Returns {0} when admitted (with `want_used`: {0, "used1,...,used7" per
-- counter}, spent + reserved after this reservation), else {counter, dim,
-- spent, reserved} (1-based); {-1} when the epoch marker is missing (the
-- counters were lost and must be seeded again), {-2, epoch} when it is not the
-- epoch the caller knows (another replica re-seeded them).
local function reserve_one(held, info, epoch_key, now, id, expiry, astr, epoch, want_used, hs, ps)
  local a = nums(astr)
  local current = redis.call('GET', epoch_key)
  if not current then return {-1} end
  if current ~= epoch then return {-2, current} end
  local figs, marks = {}, {}
  purge(held, info, now)
  for i = 1, #hs do
    local h, p = hs[i], ps[i]
    roll(h, now, p[1], p[2])
    local v, marked = figures(h)
    figs[i], marks[i] = v, marked
    for d = 1, N do
      local cap = p[5 + d]
      if cap >= 0 and v[d] + v[N + d] + a[d] > cap then
        return {i, d, fmt(v[d]), fmt(v[N + d])}
      end
    end
  end
  local where = {'H', astr}
  local out = {0}
  for i = 1, #hs do
    local h, p, v = hs[i], ps[i], figs[i]
    local args = {}
    for d = 1, N do
      if a[d] ~= 0 then
        args[#args + 1] = RFIELDS[d]
        args[#args + 1] = fmt(v[N + d] + a[d])
      end
    end
    if p[5] == 1 then
      local lim = {}
      for d = 1, N do lim[d] = fmt(p[5 + d]) end
      args[#args + 1] = 'L'
      args[#args + 1] = table.concat(lim, ',')
    end
    if #args > 0 then redis.call('HSET', h, unpack(args)) end
    expire(h, p[3], p[4], marks[i])
    where[#where + 1] = fmt(p[1]) .. ',' .. fmt(p[2]) .. ',' .. h
    if want_used then
      local used = {}
      for d = 1, N do used[d] = fmt(v[d] + v[N + d] + a[d]) end
      out[#out + 1] = table.concat(used, ',')
    end
  end
  redis.call('ZADD', held, expiry, id)
  redis.call('HSET', info, id, table.concat(where, '\n'))
  return out
end
