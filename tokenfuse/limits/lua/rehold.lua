-- Hold again the reservations of requests still in flight on this replica,
-- after the store lost them (or after a fail-open outage admitted them locally).
-- KEYS: held zset, held info hash, epoch marker, counter hash 1..n
-- ARGV: n, then per counter "bucket_ms,nbuckets,pexpireat_ms,pexpire_ms",
--       then per reservation: id, expiry_ms, "a1,...,a7", "i1,i2,..." (counter indexes)
-- A reservation the store still knows (held, charged or settled) is left alone,
-- so this is safe to repeat and to race with settles. No cap is checked: these
-- requests were admitted and may be billed, so the counters must show them.
-- Returns how many reservations were held again.
local n = tonumber(ARGV[1])
local done = 0
local k = 2 + n
while k + 3 <= #ARGV do
  local id, expiry, amounts, idx = ARGV[k], ARGV[k + 1], ARGV[k + 2], nums(ARGV[k + 3])
  if redis.call('HEXISTS', KEYS[2], id) == 0 then
    local a = nums(amounts)
    local where = {'H', amounts}
    for _, i in ipairs(idx) do
      local h = KEYS[3 + i]
      local p = nums(ARGV[1 + i])
      for d = 1, N do
        if a[d] ~= 0 then redis.call('HINCRBY', h, RFIELDS[d], fmt(a[d])) end
      end
      expire(h, p[3], p[4], redis.call('HEXISTS', h, 'e') == 1)
      where[#where + 1] = fmt(p[1]) .. ',' .. fmt(p[2]) .. ',' .. h
    end
    redis.call('ZADD', KEYS[1], expiry, id)
    redis.call('HSET', KEYS[2], id, table.concat(where, '\n'))
    done = done + 1
  end
  k = k + 4
end
return done
