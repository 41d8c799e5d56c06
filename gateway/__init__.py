"""The access layer: connections, authentication, frames to commands and results to frames."""
