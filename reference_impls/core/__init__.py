"""Plumbing shared by every method, with no paper's math in it.

Read in this order: ``tokenizer`` → ``models`` → ``training`` (batching and the loop) →
``sft`` (training on segments of text) → ``generation`` → ``sampling`` → ``metrics`` → ``data_sources`` (which sequences carry the loss) →
``recipe`` (what a method module returns).
"""
