-- Set a hash field to a number if that is higher than what it holds (never lower it, so a
-- replayed older batch cannot move a high-water mark back).
-- KEYS[1] hash   ARGV[1] field   ARGV[2] number.   Returns 1 if it raised the field, else 0.
local now = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > now then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
