"""How a student reaches its teacher.

``embedded`` and ``instruct`` load the two embedded teachers (shipped with the package; another
recipe is trained on first use and cached) and ``catalog`` rebuilds and compares them;
``text``, ``http``, ``messages``, ``response_cache``, ``access`` and ``server`` are the black-box
access layer (text in, text out, any OpenAI-compatible endpoint); ``topk`` stores a white-box
teacher's top-k log-probs once on disk for offline distillation.
"""
