-- The members of a group who are connected now, as "gateway|user" fields, checked against the
-- members hash so that someone who has just left is never pushed to.
-- KEYS[1] online hash ("gateway|user" -> connections)   KEYS[2] members hash
local fields = redis.call('HKEYS', KEYS[1])
local out = {}
local CHUNK = 1000  -- HMGET arguments per call (Lua's unpack has a stack limit)
for first = 1, #fields, CHUNK do
  local last = math.min(first + CHUNK - 1, #fields)
  local users = {}
  for i = first, last do
    users[#users + 1] = string.match(fields[i], '|([^|]+)$') or ''  -- user ids never hold '|'
  end
  local roles = redis.call('HMGET', KEYS[2], unpack(users))
  for i = first, last do
    if roles[i - first + 1] then
      out[#out + 1] = fields[i]
    end
  end
end
return out
