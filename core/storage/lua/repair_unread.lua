-- Rebuild one user's unread counts from seqs and read positions.
-- KEYS: inbox (unused), last (hash), read (hash), unread (hash), unread_total, recalled (hash)
-- unread[c] = last delivered seq[c] - read seq[c] - the recalled seqs between them; total = their sum.
-- Returns {conversations whose count changed, old total, new total}.
--!include _recalled.lua
local last = redis.call('HGETALL', KEYS[2])
local changed, total = 0, 0
for i = 1, #last, 2 do
  local conv, seq = last[i], tonumber(last[i + 1])
  local read = tonumber(redis.call('HGET', KEYS[3], conv) or '0')
  if read > seq then
    read = seq
    redis.call('HSET', KEYS[3], conv, read)
  end
  local want = seq - read - recalled_between(KEYS[6], conv, read, seq)
  if want < 0 then want = 0 end
  -- an absent count is 0 (every reader takes it so; advance.lua writes none for 0)
  if tonumber(redis.call('HGET', KEYS[4], conv) or '0') ~= want then
    changed = changed + 1
    redis.call('HSET', KEYS[4], conv, want)
  end
  total = total + want
end
local old = tonumber(redis.call('GET', KEYS[5]) or '0')
redis.call('SET', KEYS[5], total)
return {changed, old, total}
