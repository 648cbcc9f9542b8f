"""Which blocks the cache keeps: admission and eviction decisions, pure (no I/O, no clock).

The same code decides in the store (proxy/store/) and in `edgecache simulate`, so what is
measured is what runs. blocks.py: objects as blocks, and the eviction order inside one
object; adaptive.py: edgecache's policy; lru.py: plain LRU, the reference; replay.py: a
trace through a policy, and the figures it gives.
"""
