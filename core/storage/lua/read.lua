-- A read report: the user has read a conversation up to a seq.
-- KEYS: inbox, last (hash), read (hash), unread (hash), unread_total, recalled (hash)
-- ARGV[1] conversation  ARGV[2] seq read up to
-- The read seq only moves forward and never past the last delivered seq, so reports that
-- arrive late or twice change nothing. unread = last - read - the recalled seqs between them.
-- Returns {read seq, unread in the conversation, total}.
--!include _recalled.lua
local conv = ARGV[1]
local last = tonumber(redis.call('HGET', KEYS[2], conv) or '0')
local read = tonumber(redis.call('HGET', KEYS[3], conv) or '0')
local upto = math.min(tonumber(ARGV[2]), last)
if upto > read then
  read = upto
  redis.call('HSET', KEYS[3], conv, read)
end
local old = tonumber(redis.call('HGET', KEYS[4], conv) or '0')
local new = last - read - recalled_between(KEYS[6], conv, read, last)
if new < 0 then new = 0 end
redis.call('HSET', KEYS[4], conv, new)
local total = redis.call('INCRBY', KEYS[5], new - old)
return {read, new, total}
