-- Trim a batch off the head of an archive queue, if the head is still that batch.
-- KEYS[1] the queue (a list)   ARGV[1] how many records the batch took from the head
-- ARGV[2] the batch's first record, as queued   ARGV[3] its last record
-- A writer whose partition lock ran out while it committed may find its batch already trimmed
-- by another writer: trimming by count then would drop records nobody wrote. Returns 1 when
-- trimmed, 0 when the head is not the batch (nothing changes).
local count = tonumber(ARGV[1])
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[2] or redis.call('LINDEX', KEYS[1], count - 1) ~= ARGV[3] then
  return 0
end
redis.call('LTRIM', KEYS[1], count, -1)
return 1
