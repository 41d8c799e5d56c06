-- What the ingest agent needs to know about a group for a batch, in one call.
-- KEYS[1] members hash   ARGV[1] list members if fewer than this   ARGV[2..] senders
-- Returns {member count, members (or an empty list when the group is as big as ARGV[1]),
-- 1|0 per sender: is a member}.
local count = redis.call('HLEN', KEYS[1])
local members = {}
if count < tonumber(ARGV[1]) then
  members = redis.call('HKEYS', KEYS[1])
end
local flags = {}
for i = 2, #ARGV do
  flags[#flags + 1] = redis.call('HEXISTS', KEYS[1], ARGV[i])
end
return {count, members, flags}
