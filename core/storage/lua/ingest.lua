-- Accept one message into a conversation, exactly once per (sender, client message id).
-- KEYS[1] dedup key   KEYS[2] conversation seq counter   KEYS[3] conversation log (score = seq)
-- KEYS[4] the seq up to which the archive has sealed the conversation
-- KEYS[5] the changes (recalls, edits; score = seq) whose archive row is not committed yet
-- ARGV[1] candidate mid   ARGV[2] dedup ttl (s)   ARGV[3] message JSON without mid/seq
-- ARGV[4] how many newest messages the log keeps  ARGV[5] fan-out mode ('write' or 'read')
-- Returns {mid, seq, duplicate (0|1), stored entry or false, fan-out mode}. A replay returns
-- what the first run assigned, stored and chose, so seqs stay gap-free, nothing is stored
-- twice, and a message is fanned out the same way however often it comes.
local seen = redis.call('GET', KEYS[1])
if seen then
  local mid, seq, mode = string.match(seen, '^(%d+):(%d+):?(%a*)$')
  seq = tonumber(seq)
  local entry = redis.call('ZRANGEBYSCORE', KEYS[3], seq, seq)[1] or false
  return {tonumber(mid), seq, 1, entry, mode}
end
local seq = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. seq .. ':' .. ARGV[5], 'EX', tonumber(ARGV[2]))
-- mid and seq are spliced in as text: cjson would print a 53-bit mid in 14-digit float
-- notation and lose it
local body = string.sub(ARGV[3], 2)
local sep = (body == '}') and '' or ','
local entry = '{"mid":' .. ARGV[1] .. ',"seq":' .. seq .. sep .. body
redis.call('ZADD', KEYS[3], seq, entry)
-- keep the newest ARGV[4], and every message the archive has not sealed yet: history reads the
-- log first and the archive below it, so dropping an unsealed message would leave a hole
local limit = tonumber(ARGV[4])
local sealed = tonumber(redis.call('GET', KEYS[4]) or '0')
local upto = math.min(sealed, seq - limit)
local amended = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')[2]
if amended then  -- nor an amended one whose latest version the archive has not yet
  upto = math.min(upto, tonumber(amended) - 1)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', upto)
-- a safety cap should the archive stall for long: memory stays bounded (history may then have holes)
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(limit * 10 + 1))
return {tonumber(ARGV[1]), seq, 0, entry, ARGV[5]}
