"""White-box distillation (survey §3.1-3.2): the student sees the teacher's logits or hidden states.

One package per taxonomy branch: ``logits`` (``white-box/logits``) and, as it lands, ``hint``
(``white-box/hint``). Modules directly in this package (``pruning``) are shared by its branches
and are never methods.
"""
