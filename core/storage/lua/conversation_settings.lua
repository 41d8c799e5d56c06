-- Change a user's settings of one conversation (set_conversation, or a read clearing
-- marked_unread), in one step whatever other devices change at the same time.
-- KEYS[1] the user's conversation settings hash (conversation -> JSON)
-- ARGV[1] conversation   ARGV[2] pinned   ARGV[3] muted   ARGV[4] hidden   ARGV[5] marked_unread:
-- each '1' (set), '0' (clear) or '' (leave as it is)   ARGV[6] the conversation's last seq
-- (hidden_seq when hiding).
-- Settings back at their defaults leave the hash (absent = all defaults). The seq is kept as
-- its digits ('%.0f': exact to 2^53 in every Lua, never exponent notation).
-- Returns {changed 0|1, pinned 0|1, muted 0|1, hidden_seq ('' = none), marked_unread 0|1}.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local pinned, muted, hidden_seq, marked = false, false, '', false
if raw then
  local stored = cjson.decode(raw)
  pinned = stored.pinned == true
  muted = stored.muted == true
  marked = stored.marked_unread == true
  if type(stored.hidden_seq) == 'number' then
    hidden_seq = string.format('%.0f', stored.hidden_seq)
  end
end
local function wanted(arg, now)
  if arg == '1' then return true elseif arg == '0' then return false end
  return now
end
local new_pinned, new_muted, new_marked = wanted(ARGV[2], pinned), wanted(ARGV[3], muted), wanted(ARGV[5], marked)
local new_hidden = hidden_seq
if ARGV[4] == '1' then new_hidden = ARGV[6] elseif ARGV[4] == '0' then new_hidden = '' end
local changed = new_pinned ~= pinned or new_muted ~= muted or new_marked ~= marked or new_hidden ~= hidden_seq
if changed then
  if not new_pinned and not new_muted and not new_marked and new_hidden == '' then
    redis.call('HDEL', KEYS[1], ARGV[1])
  else
    local function flag(b) if b then return 'true' end return 'false' end
    redis.call('HSET', KEYS[1], ARGV[1], '{"pinned":' .. flag(new_pinned) .. ',"muted":' .. flag(new_muted)
      .. ',"hidden_seq":' .. (new_hidden == '' and 'null' or new_hidden) .. ',"marked_unread":' .. flag(new_marked) .. '}')
  end
end
local function bit(b) if b then return 1 end return 0 end
return {bit(changed), bit(new_pinned), bit(new_muted), new_hidden, bit(new_marked)}
