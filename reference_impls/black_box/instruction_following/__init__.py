"""Black-box, instruction-following distillation methods: one module per taxonomy entry.

Each module registers a `reference_impls.core.recipe.Recipe` with a `reference_impls.black_box.pipeline.TextPipeline` as its data: the paper's data
pipeline at small scale, run by ``kdatlas run ID`` against the embedded instruction teacher, a
local model or any OpenAI-compatible endpoint.
"""
