-- A sweep is done: forget the gateway unless it beat again meanwhile (then it writes its
-- entries again itself), and let go of the lock if it is still ours.
-- KEYS[1] alive sorted set   KEYS[2] the node's sweeping lock   ARGV[1] node   ARGV[2] token.
-- Returns 1 if the gateway was forgotten, 0 if it came back.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
local forgotten = 0
if deadline and tonumber(deadline) < now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  forgotten = 1
end
if redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
return forgotten
