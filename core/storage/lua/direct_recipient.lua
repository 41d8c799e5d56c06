-- May a one-to-one message from a sender reach this recipient? Rules 1-4 of the send check
-- (core/contacts.py) on the recipient's side, in one step.
-- KEYS[1] account   KEYS[2] blocked   KEYS[3] contacts   KEYS[4] wrote_to   (the recipient's)
-- ARGV[1] sender   ARGV[2] '1' if a user without an account is unknown (accounts=registered)
-- ARGV[3] '1' to apply the recipient's privacy (one-to-one messages), '0' not (group additions)
-- Returns 'ok' or the refusal's error code: 'not_found', 'user_deactivated', 'blocked', 'contacts_only'.
local sender = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status and ARGV[2] == '1' then
  return 'not_found'
end
if status == 'deactivated' then
  return 'user_deactivated'
end
if redis.call('HEXISTS', KEYS[2], sender) == 1 then
  return 'blocked'
end
if ARGV[3] == '1' and redis.call('HGET', KEYS[1], 'dm') == 'contacts'
    and redis.call('HEXISTS', KEYS[3], sender) == 0 and redis.call('SISMEMBER', KEYS[4], sender) == 0 then
  return 'contacts_only'
end
return 'ok'
