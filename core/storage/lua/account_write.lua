-- Write one account hash in one step, if its account is as expected (core/storage/accounts.py).
-- KEYS[1] the user's account hash
-- ARGV[1] expect: 'absent' (create: no account yet), 'present' (any account), 'active' or
-- 'deactivated' (an account with that status). An account is a hash with a 'status' field:
-- presence may have written 'last_seen_ms' on the hash of a user who has none.
-- ARGV[2] n: the number of field/value pairs that follow, to set; the arguments after them
-- are fields to delete.
-- Returns {'ok', field, value, ...} (the hash after the write), {'not_found'} (no account), or
-- {'conflict', field, value, ...} (the hash as it is: an account exists, or has another status).
local status = redis.call('HGET', KEYS[1], 'status')
local expect = ARGV[1]
local function as_is(outcome)
  local out = redis.call('HGETALL', KEYS[1])
  table.insert(out, 1, outcome)
  return out
end
if expect == 'absent' then
  if status then
    return as_is('conflict')
  end
elseif not status then
  return {'not_found'}
elseif expect ~= 'present' and status ~= expect then
  return as_is('conflict')
end
local pairs_end = 2 + 2 * tonumber(ARGV[2])
if pairs_end > 2 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3, pairs_end))
end
if #ARGV > pairs_end then
  redis.call('HDEL', KEYS[1], unpack(ARGV, pairs_end + 1, #ARGV))
end
return as_is('ok')
