-- The sender's side of the one-to-one send check: does the sender block the recipient; and a
-- sender writing to a non-contact marks them, so their replies pass should the sender take
-- messages from contacts only (now or later).
-- KEYS[1] account   KEYS[2] blocked   KEYS[3] contacts   KEYS[4] wrote_to   (the sender's)
-- ARGV[1] recipient
-- Returns 'blocked' | 'marked' (the mark is new: undo it if the recipient's side refused) | 'ok'.
local recipient = ARGV[1]
if redis.call('HEXISTS', KEYS[2], recipient) == 1 then
  return 'blocked'
end
if redis.call('HEXISTS', KEYS[3], recipient) == 0 and redis.call('SADD', KEYS[4], recipient) == 1 then
  return 'marked'
end
return 'ok'
