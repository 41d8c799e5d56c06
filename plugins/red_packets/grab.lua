-- Grab a share of a red packet: double-average split, atomically, at most once per user.
-- KEYS[1] packet hash   KEYS[2] grabs hash (user -> cents)
-- ARGV[1] user   ARGV[2] now (ms)   ARGV[3] a random number in [0, 1)
-- A share is uniform in [1, 2 x average of what is left], and never so large that a later
-- grabber could get less than 1 cent; the last grabber takes what is left. So shares always
-- add up to the total exactly, and no grab can overdraw.
-- Returns {status, share, cents left, count left}: status 1 ok, -1 no packet, -2 expired,
-- -3 already grabbed (share = that grab), -4 all shares taken.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, 0, 0, 0}
end
local packet = redis.call('HMGET', KEYS[1], 'cents_left', 'count_left', 'expires_at')
local cents, count, expires = tonumber(packet[1]), tonumber(packet[2]), tonumber(packet[3])
local previous = redis.call('HGET', KEYS[2], ARGV[1])
if previous then
  return {-3, tonumber(previous), cents, count}
end
if tonumber(ARGV[2]) > expires then
  return {-2, 0, cents, count}
end
if count == 0 then
  return {-4, 0, cents, count}
end
local share
if count == 1 then
  share = cents
else
  local most = math.floor(cents * 2 / count)
  if most > cents - (count - 1) then most = cents - (count - 1) end
  if most < 1 then most = 1 end
  share = 1 + math.floor(tonumber(ARGV[3]) * most)
  if share > most then share = most end
end
redis.call('HSET', KEYS[2], ARGV[1], share)
redis.call('HSET', KEYS[1], 'cents_left', cents - share, 'count_left', count - 1)
return {1, share, cents - share, count - 1}
