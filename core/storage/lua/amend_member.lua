-- A message changed (recalled or edited): one member's side of it, once however often it runs.
-- KEYS: inbox, last (hash), read (hash), unread (hash), unread_total, recalled (hash)
-- ARGV[1] conversation  ARGV[2] seq  ARGV[3] mid  ARGV[4] the message's new JSON
-- ARGV[5] its rank (its version; a tombstone outranks every version)  ARGV[6] 1 for a recall
-- ARGV[7] 1 if the member sent the message
-- The inbox entry (score = mid), if the member has not ACKed it yet, is replaced only by a
-- higher rank: two changes that race leave the newer one. A recall records the seq for a
-- member who has not read it (read seq below it; a seq above their last too, as a read fan-out
-- member may not be flushed yet), once, and sets unread = last - read - the recalled seqs
-- between them: their count drops by one, exactly once. The sender's count never moves.
-- Returns {1 if their unread count changed else 0, unread in the conversation, unread total, read seq}.
--!include _recalled.lua
local conv, seq, mid, rank = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[5])
local held = redis.call('ZRANGEBYSCORE', KEYS[1], mid, mid)[1]
if held and held ~= ARGV[4] then
  local old = cjson.decode(held)  -- only version and recalled_at_ms are read (mids lose digits in cjson)
  local old_rank = tonumber(old.version) or 1
  if old.recalled_at_ms then old_rank = math.huge end
  if rank > old_rank then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], mid, mid)
    redis.call('ZADD', KEYS[1], mid, ARGV[4])
  end
end
local read = tonumber(redis.call('HGET', KEYS[3], conv) or '0')
local old = tonumber(redis.call('HGET', KEYS[4], conv) or '0')
local total = tonumber(redis.call('GET', KEYS[5]) or '0')
if ARGV[6] ~= '1' or ARGV[7] == '1' or seq <= read then
  return {0, old, total, read}
end
local list = redis.call('HGET', KEYS[6], conv)
local seqs, present = {}, false
if list then
  for each in string.gmatch(list, '%d+') do
    if tonumber(each) == seq then present = true end
    seqs[#seqs + 1] = each
  end
end
if not present then  -- kept as text: Lua would print a big number in float notation
  seqs[#seqs + 1] = ARGV[2]
  table.sort(seqs, function(a, b) return tonumber(a) < tonumber(b) end)
  redis.call('HSET', KEYS[6], conv, table.concat(seqs, ','))
end
local last = redis.call('HGET', KEYS[2], conv)
if not last then  -- nothing delivered here yet: the count is set when it is
  return {0, old, total, read}
end
last = tonumber(last)
local new = last - read - recalled_between(KEYS[6], conv, read, last)
if new < 0 then new = 0 end
if new == old then
  return {0, old, total, read}
end
redis.call('HSET', KEYS[4], conv, new)
return {1, new, tonumber(redis.call('INCRBY', KEYS[5], new - old)), read}
