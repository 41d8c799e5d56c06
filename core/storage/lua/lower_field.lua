-- Count one connection off a hash field and remove the field at zero, atomically (a connect
-- on the same field in between is never lost).
-- KEYS[1] hash   ARGV[1] field.   Returns what is left.
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
return left
