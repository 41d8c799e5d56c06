-- Write one side of a contact request, unless that side blocks the peer or is linked already;
-- crossed requests (each asked the other) become a contact edge on this side.
-- KEYS[1] contacts   KEYS[2] requests_in   KEYS[3] requests_out   KEYS[4] blocked   (one user's)
-- ARGV[1] peer   ARGV[2] 'in' (the peer asks this user) | 'out' (this user asks the peer)
-- ARGV[3] the request's JSON {note, at_ms}   ARGV[4] since_ms for an edge made here
-- Returns {'blocked'} | {'contact', since_ms} (linked already) | {'accepted', since_ms} (the
-- opposite request was pending: linked now, both requests gone) | {'requested'}.
-- Idempotent: writing the same request again changes nothing but its JSON.
local peer = ARGV[1]
if redis.call('HEXISTS', KEYS[4], peer) == 1 then
  return {'blocked'}
end
local since = redis.call('HGET', KEYS[1], peer)
if since then
  return {'contact', since}
end
local mine, opposite = KEYS[3], KEYS[2]
if ARGV[2] == 'in' then
  mine, opposite = KEYS[2], KEYS[3]
end
if redis.call('HEXISTS', opposite, peer) == 1 then
  redis.call('HSET', KEYS[1], peer, ARGV[4])
  redis.call('HDEL', KEYS[2], peer)
  redis.call('HDEL', KEYS[3], peer)
  return {'accepted', ARGV[4]}
end
redis.call('HSET', mine, peer, ARGV[3])
return {'requested'}
