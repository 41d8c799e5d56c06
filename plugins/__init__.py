"""Built-in plugins, registered the same way as third-party ones."""
