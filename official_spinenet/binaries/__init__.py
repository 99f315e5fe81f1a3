"""User commands: thin absl binaries (flags -> one library call), one module per command."""
