-- A member left a conversation (or was removed): drop its state, take its unread out of the
-- total, and take its messages out of the inbox: the member may not see the conversation any
-- more, and a recall or edit after this would not reach those entries (it rewrites current
-- members' inboxes only), so a recalled body would stay readable there.
-- KEYS: inbox, last (hash), read (hash), unread (hash), unread_total, recalled (hash)
-- ARGV[1] conversation.   Returns the new total.
-- The inbox holds at most the inbox limit of entries (deliver.lua trims it), so the scan is bounded.
local conv = ARGV[1]
local gone = {}
for _, entry in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  -- only a string field is read (mids lose digits in cjson); an entry cjson refuses stays
  local ok, message = pcall(cjson.decode, entry)
  if ok and type(message) == 'table' and message.conversation == conv then
    gone[#gone + 1] = entry
  end
  if #gone == 500 then  -- ZREM takes them in batches: unpack has a limit of its own
    redis.call('ZREM', KEYS[1], unpack(gone))
    gone = {}
  end
end
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
end
local old = tonumber(redis.call('HGET', KEYS[4], conv) or '0')
redis.call('HDEL', KEYS[2], conv)
redis.call('HDEL', KEYS[3], conv)
redis.call('HDEL', KEYS[4], conv)
redis.call('HDEL', KEYS[6], conv)
return tonumber(redis.call('INCRBY', KEYS[5], 0 - old))  -- not -old: Lua prints -0, which INCRBY refuses
