-- One user blocks a peer: the block, and on this side no contact edge, no request either way
-- and no first-message mark (unblocking restores none of them).
-- KEYS[1] contacts   KEYS[2] requests_in   KEYS[3] requests_out   KEYS[4] blocked   KEYS[5] wrote_to
-- ARGV[1] peer   ARGV[2] at_ms   ARGV[3] most users one may block
-- Returns {'conflict', at_ms} (blocked already) | {'full'} | {'blocked', had contact (0|1),
-- had an incoming request (0|1), had an outgoing request (0|1)}.
local peer = ARGV[1]
local at = redis.call('HGET', KEYS[4], peer)
if at then
  return {'conflict', at}
end
if redis.call('HLEN', KEYS[4]) >= tonumber(ARGV[3]) then
  return {'full'}
end
redis.call('HSET', KEYS[4], peer, ARGV[2])
redis.call('SREM', KEYS[5], peer)
return {
  'blocked',
  redis.call('HDEL', KEYS[1], peer),
  redis.call('HDEL', KEYS[2], peer),
  redis.call('HDEL', KEYS[3], peer),
}
