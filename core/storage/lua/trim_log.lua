-- The archive has sealed a conversation up to a seq: record it, and trim the conversation log
-- to its newest ARGV[2] among what is sealed (unsealed messages stay: see ingest.lua).
-- KEYS[1] conversation log (score = seq)   KEYS[2] the seq sealed up to
-- KEYS[3] the changes (recalls, edits; score = seq) whose archive row is not committed yet
-- ARGV[1] highest seq just sealed   ARGV[2] how many newest messages the log keeps
-- Idempotent: the mark only rises, and trimming twice removes nothing more.
local sealed = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[1]))
redis.call('SET', KEYS[2], sealed)
local limit = tonumber(ARGV[2])
local edge = redis.call('ZRANGE', KEYS[1], -(limit + 1), -(limit + 1), 'WITHSCORES')[2]
if edge then
  local upto = math.min(sealed, tonumber(edge))
  local amended = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]
  if amended then  -- the archive has not the latest version of it yet: keep it
    upto = math.min(upto, tonumber(amended) - 1)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', upto)
end
return sealed
