"""The persistent disk cache: metadata entries, fixed-size blocks and fill leases (diskcache)."""
