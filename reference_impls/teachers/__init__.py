"""How a student reaches its teacher.

``embedded`` and ``instruct`` build (train on first use, cache) the two embedded teachers;
``text``, ``http``, ``messages``, ``response_cache``, ``access`` and ``server`` are the black-box
access layer (text in, text out, any OpenAI-compatible endpoint); ``topk`` stores a white-box
teacher's top-k log-probs once on disk for offline distillation.
"""
