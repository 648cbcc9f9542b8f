"""edgecache: a caching reverse proxy for video and other large files."""

__version__ = "0.1.0"
