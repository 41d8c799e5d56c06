-- One user's "mentions me" record in one conversation: record a mention (optionally), drop the
-- ones the user has read, and answer what the count is made of (core/storage/mentions.py counts).
-- KEYS: mentions (hash), read (hash), last (hash), recalled (hash) -- all the user's
-- ARGV[1] conversation  ARGV[2] seq of a message mentioning the user (0: record nothing)
-- ARGV[3] how many seqs to keep at most (the newest)
-- The record is a set of seqs (comma-separated, ascending): recording a seq twice (a replay)
-- changes nothing, and the count is never stored, always made from seqs and the read seq.
-- Returns {read seq, last seq, the seqs above the read seq, the user's recalled seqs there}.
local conv, seq, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local read = tonumber(redis.call('HGET', KEYS[2], conv) or '0')
local last = tonumber(redis.call('HGET', KEYS[3], conv) or '0')
local raw = redis.call('HGET', KEYS[1], conv)
local kept, changed, placed = {}, false, (seq <= read)
if raw then
  for token in string.gmatch(raw, '%d+') do
    local value = tonumber(token)
    if value <= read then
      changed = true
    else
      if not placed and seq <= value then
        if seq < value then kept[#kept + 1] = ARGV[2]; changed = true end
        placed = true
      end
      kept[#kept + 1] = token
    end
  end
end
if not placed then kept[#kept + 1] = ARGV[2]; changed = true end
while #kept > keep do table.remove(kept, 1); changed = true end
local now = table.concat(kept, ',')
if changed then
  if #kept == 0 then redis.call('HDEL', KEYS[1], conv) else redis.call('HSET', KEYS[1], conv, now) end
end
return {read, last, now, redis.call('HGET', KEYS[4], conv) or ''}
