-- Open a red packet once (a replayed message changes nothing).
-- KEYS[1] packet hash   ARGV: total cents, count, sender, conversation, expires_at_ms, the
-- message's seq in its conversation (who may see the packet: members who joined before it)
-- Returns 1 if opened now, 0 if it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'count', ARGV[2], 'cents_left', ARGV[1], 'count_left', ARGV[2],
  'sender', ARGV[3], 'conversation', ARGV[4], 'expires_at', ARGV[5], 'refunded', 0, 'seq', ARGV[6] or 1)
return 1
