"""pfsfs: a versioned filesystem for data: content-defined chunks, git-like commits, mounts."""

__version__ = "0.1.0"
