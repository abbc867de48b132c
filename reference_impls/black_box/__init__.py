"""Black-box distillation (survey §3.3): the student sees only the teacher's text.

One package per taxonomy branch (``instruction_following`` for ``black-box/instruction-following``,
then ``cot`` and ``icl``). Modules directly in this package are shared by every black-box method:
``pipeline`` (what a data pipeline gets and returns, the evaluations) and ``filters``. Training on
segments of text is plumbing: `reference_impls.core.sft`.
"""
