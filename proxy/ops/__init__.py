"""Operating the edge: start-up messages, cache warming, metrics, the access log, the browser page."""
