-- Claim the sweep of one gateway presumed dead (its deadline passed), so one sweeper does it.
-- KEYS[1] alive sorted set   KEYS[2] the node's sweeping lock
-- ARGV[1] node   ARGV[2] sweeper's token   ARGV[3] lock lifetime in ms (a sweeper that dies
-- mid-way lets go by itself, and the next one starts over: a sweep is idempotent).
-- Returns 1 if claimed, 0 if the gateway is alive, gone from the registry or being swept.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) >= now then
  return 0
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return 1
end
return 0
