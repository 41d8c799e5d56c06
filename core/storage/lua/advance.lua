-- Bring one member up to date in a read fan-out conversation: the messages up to a seq exist
-- (in the conversation's log, not in the inbox), so the member's last seq and unread move.
-- KEYS: inbox (unused), last (hash), read (hash), unread (hash), unread_total, recalled (hash),
-- the user's groups (set)
-- ARGV[1] conversation  ARGV[2] seq the conversation has reached  ARGV[3] seq the member has
-- read up to at least (their own message, or their joining point; 0 for none)  ARGV[4] gid
-- Only for a current member: a flush that listed the members a moment before someone left
-- must not bring back the count that leaving removed.
-- Counts are set from seqs, never incremented, so running it twice or late changes nothing:
-- unread = last - read - the recalled seqs between them.
-- Returns {unread in the conversation, unread total}.
--!include _recalled.lua
local conv, seq, floor = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('SISMEMBER', KEYS[7], ARGV[4]) == 0 then
  return {tonumber(redis.call('HGET', KEYS[4], conv) or '0'), tonumber(redis.call('GET', KEYS[5]) or '0')}
end
local last = tonumber(redis.call('HGET', KEYS[2], conv) or '0')
if seq > last then
  last = seq
  redis.call('HSET', KEYS[2], conv, last)
end
local read = tonumber(redis.call('HGET', KEYS[3], conv) or '0')
if floor > read then
  read = math.min(floor, last)
  redis.call('HSET', KEYS[3], conv, read)
end
local old = tonumber(redis.call('HGET', KEYS[4], conv) or '0')
local new = last - read - recalled_between(KEYS[6], conv, read, last)
if new < 0 then new = 0 end
if new ~= old then
  redis.call('HSET', KEYS[4], conv, new)
end
return {new, tonumber(redis.call('INCRBY', KEYS[5], new - old))}
