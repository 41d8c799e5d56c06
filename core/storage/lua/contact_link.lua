-- Make the peer a contact on one user's side (an accepted request), unless that side blocks
-- the peer: the edge, and no request either way. An edge already there keeps the earlier of
-- its time and ARGV[2], so two acceptances racing (crossed requests) leave both sides one time.
-- KEYS[1] contacts   KEYS[2] requests_in   KEYS[3] requests_out   KEYS[4] blocked   (one user's)
-- ARGV[1] peer   ARGV[2] since_ms
-- Returns {'blocked'} | {'linked', since_ms as stored}. Idempotent.
local peer = ARGV[1]
if redis.call('HEXISTS', KEYS[4], peer) == 1 then
  return {'blocked'}
end
local since = redis.call('HGET', KEYS[1], peer)
if not since or tonumber(ARGV[2]) < tonumber(since) then
  since = ARGV[2]
  redis.call('HSET', KEYS[1], peer, since)
end
redis.call('HDEL', KEYS[2], peer)
redis.call('HDEL', KEYS[3], peer)
return {'linked', since}
