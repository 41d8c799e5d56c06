"""The storage layer: every Redis key, Lua script, lock and archive record of imflow.

Nothing outside this package names a Redis key or an archive file; services in core/ call the
functions here. Replies of pipelined commands are read by handle, never by list index.
"""
