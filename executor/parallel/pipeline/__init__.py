"""Token-level pipeline of one rank at one stage of its lane: the op runner (`runtime`), point-to-point
links with a receive timeout (`links`), the K/V cache of earlier slices (`kv_cache`), the rows of a chunk
a rank materialises (`shards`) and the activation-memory probe the runtime reports (`memory_probe`)."""
