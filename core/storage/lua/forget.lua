-- A member left a conversation: drop its state and take its unread out of the total.
-- KEYS: inbox (unused), last (hash), read (hash), unread (hash), unread_total
-- ARGV[1] conversation.   Returns the new total.
local conv = ARGV[1]
local old = tonumber(redis.call('HGET', KEYS[4], conv) or '0')
redis.call('HDEL', KEYS[2], conv)
redis.call('HDEL', KEYS[3], conv)
redis.call('HDEL', KEYS[4], conv)
return tonumber(redis.call('INCRBY', KEYS[5], 0 - old))  -- not -old: Lua prints -0, which INCRBY refuses
