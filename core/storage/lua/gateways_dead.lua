-- The gateways presumed dead now (deadline passed, on Redis's clock), for routing to skip them.
-- KEYS[1] alive sorted set.   Returns their node names.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now))
