-- Close an expired red packet: what nobody grabbed is refunded to the sender, once.
-- KEYS[1] packet hash   ARGV[1] now (ms)
-- Returns the refunded cents, or -1 if not expired yet, or 0 if nothing (more) to refund.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local packet = redis.call('HMGET', KEYS[1], 'cents_left', 'expires_at', 'refunded')
if tonumber(ARGV[1]) <= tonumber(packet[2]) then
  return -1
end
if tonumber(packet[3]) > 0 or tonumber(packet[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'refunded', packet[1], 'cents_left', 0, 'count_left', 0)
return tonumber(packet[1])
