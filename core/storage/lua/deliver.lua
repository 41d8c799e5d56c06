-- Deliver one message to one member: inbox entry and unread counts, atomically, once.
-- KEYS: inbox, last (hash), read (hash), unread (hash), unread_total, recalled (hash)
-- ARGV[1] conversation  ARGV[2] seq  ARGV[3] mid  ARGV[4] message JSON
-- ARGV[5] 1 if the member is the sender  ARGV[6] inbox limit
-- Unread is set, not incremented: unread = last delivered seq - read seq - the recalled seqs
-- between them, so a replay (seq not above the last delivered one) changes nothing and the
-- count can always be rebuilt. A message recalled before it reached the member (the seq is in
-- their recalled list: the recall ran between the message's accept and its fan-out) is not put
-- in the inbox (the entry would hold the original body) and counts as not delivered (nobody
-- pushes it); its seq still becomes the last delivered one.
-- Returns {delivered (0|1), unread in the conversation, unread total}.
--!include _recalled.lua
local conv, seq = ARGV[1], tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], conv) or '0')
if seq <= last then
  return {0, tonumber(redis.call('HGET', KEYS[4], conv) or '0'), tonumber(redis.call('GET', KEYS[5]) or '0')}
end
redis.call('HSET', KEYS[2], conv, seq)
local recalled = false
for each in string.gmatch(redis.call('HGET', KEYS[6], conv) or '', '%d+') do
  if tonumber(each) == seq then recalled = true end
end
if not recalled then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[4])
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[6]) + 1))
end
local read = tonumber(redis.call('HGET', KEYS[3], conv) or '0')
if ARGV[5] == '1' and seq > read then  -- one has read what one sends, and all before it
  read = seq
  redis.call('HSET', KEYS[3], conv, read)
end
local old = tonumber(redis.call('HGET', KEYS[4], conv) or '0')
local new = seq - read - recalled_between(KEYS[6], conv, read, seq)
if new < 0 then new = 0 end
redis.call('HSET', KEYS[4], conv, new)
local total = redis.call('INCRBY', KEYS[5], new - old)
return {recalled and 0 or 1, new, total}
