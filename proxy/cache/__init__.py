"""The cache driver: executes the pure decisions of `proxy.http.cache` against the store and the origin."""
