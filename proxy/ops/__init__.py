"""Operating the edge: start-up messages, cache warming."""
