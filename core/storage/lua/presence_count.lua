-- Count a change of one user's connections on one gateway, and say whether it moved the user's
-- connections over all gateways from none to some (online) or from some to none (offline).
-- KEYS[1] the user's gateways hash (node -> connections)   KEYS[2] the user's account hash
-- KEYS[3] the user's contacts hash (peer -> since_ms)
-- ARGV[1] node   ARGV[2] 'add' (one more), 'lower' (one fewer), 'drop' (the node's field goes:
-- the sweep of a dead gateway) or 'set' (the node holds ARGV[4] connections: a write-back)
-- ARGV[3] now, Unix ms (the last-seen time of a user going offline)   ARGV[4] count for 'set'
-- Returns {0} when the user stays online or offline; otherwise {1 (online) | 2 (offline), the
-- account's presence setting ('' = visible), its last_seen_ms ('' = never), contact, ...}.
-- Going offline writes last_seen_ms = ARGV[3] on the account, in the same step.
local function total()
  local n = 0
  for _, held in ipairs(redis.call('HVALS', KEYS[1])) do
    n = n + tonumber(held)
  end
  return n
end
local before = total()
local how = ARGV[2]
if how == 'add' then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
elseif how == 'lower' then
  if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
elseif how == 'drop' then
  redis.call('HDEL', KEYS[1], ARGV[1])
elseif how == 'set' then
  if tonumber(ARGV[4]) > 0 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  else
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
else
  return redis.error_reply('unknown change ' .. how)
end
local after = total()
local moved
if before <= 0 and after > 0 then
  moved = 1
elseif before > 0 and after <= 0 then
  moved = 2
  redis.call('HSET', KEYS[2], 'last_seen_ms', ARGV[3])
else
  return {0}
end
local out = {moved, redis.call('HGET', KEYS[2], 'presence') or '', redis.call('HGET', KEYS[2], 'last_seen_ms') or ''}
for _, peer in ipairs(redis.call('HKEYS', KEYS[3])) do
  out[#out + 1] = peer
end
return out
