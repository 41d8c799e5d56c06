-- One user's side of their relation with a peer, read in one step (core/storage/contacts.py).
-- KEYS[1] account   KEYS[2] contacts   KEYS[3] requests_in   KEYS[4] requests_out   KEYS[5] blocked
-- ARGV[1] peer
-- Returns {status, contact since_ms, incoming request JSON, outgoing request JSON, blocked
-- at_ms, contacts, incoming requests, outgoing requests, blocked users}: each of the first
-- five false when absent (status false: no account), the last four counts.
local peer = ARGV[1]
return {
  redis.call('HGET', KEYS[1], 'status'),
  redis.call('HGET', KEYS[2], peer),
  redis.call('HGET', KEYS[3], peer),
  redis.call('HGET', KEYS[4], peer),
  redis.call('HGET', KEYS[5], peer),
  redis.call('HLEN', KEYS[2]),
  redis.call('HLEN', KEYS[3]),
  redis.call('HLEN', KEYS[4]),
  redis.call('HLEN', KEYS[5]),
}
