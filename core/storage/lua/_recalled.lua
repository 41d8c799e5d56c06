-- Shared by the scripts that set unread counts (taken in where they say "--!include _recalled.lua";
-- loaded alone it only defines the function). A user's recalled seqs of a conversation are one
-- field of their recalled hash: ascending seqs, comma-separated, only those above their read seq.
-- recalled_between(key, conv, read, last): drops the seqs at or below read (they no longer
-- count), and returns how many of the rest are at most last, the ones unread must leave out:
-- unread = max(0, last - read - recalled_between(...)).
local function recalled_between(key, conv, read, last)
  local list = redis.call('HGET', key, conv)
  if not list then
    return 0
  end
  local kept, count, seen = {}, 0, 0
  for seq in string.gmatch(list, '%d+') do
    seen = seen + 1
    local n = tonumber(seq)
    if n > read then
      kept[#kept + 1] = seq
      if n <= last then
        count = count + 1
      end
    end
  end
  if #kept == 0 then
    redis.call('HDEL', key, conv)
  elseif #kept < seen then
    redis.call('HSET', key, conv, table.concat(kept, ','))
  end
  return count
end
