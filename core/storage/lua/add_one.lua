-- Count one connection onto a hash field (HINCRBY 1). A script, not the plain command, because
-- run_pipeline runs a pipeline again when Redis had lost its scripts (a restart): a plain
-- HINCRBY in it would have counted the first time too, and so twice; a script that was not
-- loaded did nothing the first time.
-- KEYS[1] hash   ARGV[1] field.   Returns the count.
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
