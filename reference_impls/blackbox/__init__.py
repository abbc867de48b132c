"""Black-box distillation: teacher access through text only (backends, cache, server)."""
