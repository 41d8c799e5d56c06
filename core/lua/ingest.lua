-- Accept one message into a conversation, exactly once per (sender, client message id).
-- KEYS[1] dedup key   KEYS[2] conversation seq counter   KEYS[3] conversation log (score = seq)
-- ARGV[1] candidate mid   ARGV[2] dedup ttl (s)   ARGV[3] message JSON without mid/seq
-- Returns {mid, seq, duplicate (0|1)}. A replay returns what the first run assigned, so seqs
-- stay gap-free and nothing is stored twice.
local seen = redis.call('GET', KEYS[1])
if seen then
  local sep = string.find(seen, ':', 1, true)
  return {tonumber(string.sub(seen, 1, sep - 1)), tonumber(string.sub(seen, sep + 1)), 1}
end
local mid = tonumber(ARGV[1])
local seq = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. seq, 'EX', tonumber(ARGV[2]))
-- the stored entry carries its own mid and seq, spliced in as text: cjson would print a
-- 53-bit mid in 14-digit float notation and lose it
local body = string.sub(ARGV[3], 2)
local sep = (body == '}') and '' or ','
redis.call('ZADD', KEYS[3], seq, '{"mid":' .. ARGV[1] .. ',"seq":' .. seq .. sep .. body)
return {mid, seq, 0}
