"""What a request is, as the edge sees it: who sent it (behind trusted proxies), its path and
its target (pure)."""
