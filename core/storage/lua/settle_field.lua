-- Remove a hash field if it still holds at most the given number: work done up to that number
-- is finished, and anything that raised the field meanwhile stays for the next round.
-- KEYS[1] hash   ARGV[1] field   ARGV[2] number.   Returns 1 if removed.
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if now <= tonumber(ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
