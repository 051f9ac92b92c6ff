"""Stage 2: generation. `engine` is speculative decoding itself (the lossless reference); acceptance counters
come out of it per prompt."""
