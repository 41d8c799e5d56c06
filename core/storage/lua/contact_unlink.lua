-- Take parts of one user's relation with a peer away (a decline, a cancel, a removal, the
-- blocked one's side of a block). Idempotent.
-- KEYS[1] contacts   KEYS[2] requests_in   KEYS[3] requests_out   KEYS[4] wrote_to   (one user's)
-- ARGV[1] peer   ARGV[2..] what goes: 'contact', 'in', 'out', 'wrote_to'
-- Returns how many of them were there.
local peer = ARGV[1]
local where = {contact = KEYS[1], ['in'] = KEYS[2], out = KEYS[3]}
local removed = 0
for i = 2, #ARGV do
  if ARGV[i] == 'wrote_to' then
    removed = removed + redis.call('SREM', KEYS[4], peer)
  else
    removed = removed + redis.call('HDEL', where[ARGV[i]], peer)
  end
end
return removed
