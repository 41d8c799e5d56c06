-- Take one seq out of a user's "mentions me" record in one conversation (an edit took the
-- mention out of the message; core/mentions.py ``edited``).
-- KEYS[1] the user's mentions hash   ARGV[1] conversation   ARGV[2] seq
-- The record is comma-separated ascending seqs (mentions.lua); a seq not there changes nothing.
-- Returns 1 if the seq was there, else 0.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local kept, found = {}, 0
for token in string.gmatch(raw, '%d+') do
  if token == ARGV[2] then found = 1 else kept[#kept + 1] = token end
end
if found == 0 then return 0 end
if #kept == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], table.concat(kept, ',')) end
return 1
