-- The client has these messages: remove them from the inbox (R7's ZREMRANGEBYSCORE, per mid,
-- so a message that arrived between two ACKed ones is never removed unseen).
-- KEYS[1] inbox   ARGV: mids.   Returns how many entries went.
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
end
return removed
