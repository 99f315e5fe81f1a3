"""Library functions behind binaries that need a gin-parsed task (load, train, export, ...)."""
