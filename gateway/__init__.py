"""The access layer: a Starlette app where clients connect."""
