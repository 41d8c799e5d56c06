-- Rewrite one message of a conversation's log in place (a recall's tombstone, an edit's new
-- version), if it is still the entry the caller read: the checks were made on that entry, so a
-- change that raced this one since makes it answer 0 and the caller reads and checks again.
-- KEYS[1] conversation log (score = seq)   KEYS[2] the conversation's amended changes (sorted set)
-- KEYS[3] the conversation's untold changes (sorted set)
-- ARGV[1] seq   ARGV[2] the entry as read   ARGV[3] the new entry
-- ARGV[4] the change's mark, "{seq}:{version}" or "{seq}:r" for a recall
-- The mark joins the amended set: the log keeps the entry until the archive has committed this
-- change's im_msg_versions row (archive_queue._seal takes exactly that mark out), so no reader
-- finds an older version. It also becomes the seq's untold change (replacing an older one: the
-- newer state is what members are told): the caller takes it out once members, pushes and hook
-- are done, and a repeat of the request that still finds it there does them again.
-- Returns 1 if rewritten, 0 if the entry is no longer ARGV[2] (changed, or trimmed away).
local found = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])[1]
if found ~= ARGV[2] then
  return 0
end
local seq = tonumber(ARGV[1])
redis.call('ZREM', KEYS[1], found)
redis.call('ZADD', KEYS[1], seq, ARGV[3])
redis.call('ZADD', KEYS[2], seq, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], seq, seq)
redis.call('ZADD', KEYS[3], seq, ARGV[4])
return 1
