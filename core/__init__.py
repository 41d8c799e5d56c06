"""Domain and storage: models, ids and seqs, Redis scripts, settings. Imports nothing above it."""
