-- Members join a group in one step, so the size cap and the actor's role hold however many
-- gateways add at once (checking and then writing in two round trips let them exceed the cap).
-- KEYS[1] members hash (user -> role)   KEYS[2] joined hash (user -> seq when they joined)
-- ARGV[1] most members the group may have   ARGV[2] the conversation's seq now
-- ARGV[3] actor who must be an owner or admin ('' when the group is being created)
-- ARGV[4..] user, role pairs to add (users already in the group keep their role)
-- Returns {0, newly added users...} or {1} the actor is not in the group, {2} the actor may
-- not add members, {3} the group would exceed ARGV[1].
local actor = ARGV[3]
if actor ~= '' then
  local role = redis.call('HGET', KEYS[1], actor)
  if not role then
    return {1}
  end
  if role ~= 'owner' and role ~= 'admin' then
    return {2}
  end
end
local new = {}
for i = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    new[#new + 1] = i
  end
end
if redis.call('HLEN', KEYS[1]) + #new > tonumber(ARGV[1]) then
  return {3}
end
local added = {0}
for _, i in ipairs(new) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[2])
  added[#added + 1] = ARGV[i]
end
return added
