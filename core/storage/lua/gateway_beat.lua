-- A gateway's heartbeat: push its deadline on by the TTL, on Redis's own clock (so the clocks
-- of gateways never matter), and say whether it was presumed dead meanwhile.
-- KEYS[1] alive sorted set (node -> deadline, Unix ms)   KEYS[2] the node's sweeping lock
-- ARGV[1] node   ARGV[2] TTL in ms.
-- Returns 0: alive all along; 1: it was not registered (first beat, or a sweep of its entries
-- finished: they must be written again); 2: its entries are being swept right now.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 2
end
if not before then
  return 1
end
return 0
