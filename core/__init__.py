"""The service layer of the design note (core/*.py, one module per use case) over the storage
layer (core/storage/). Imports nothing above it."""
