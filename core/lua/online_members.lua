-- The members of a group who are connected now, as "gateway|user" fields, checked against the
-- members hash so that someone who has just left is never pushed to.
-- KEYS[1] online hash ("gateway|user" -> connections)   KEYS[2] members hash
local out = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local user = string.match(field, '|([^|]+)$')  -- user ids never hold '|'; gateway names may
  if user and redis.call('HEXISTS', KEYS[2], user) == 1 then
    out[#out + 1] = field
  end
end
return out
