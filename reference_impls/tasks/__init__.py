"""The embedded toy data, scored exactly: the string-task suite (``strings``) and the instruction
suite built on it (``instructions``: composed instructions, conversations, annotation and every
text format a black-box pipeline asks of its teacher)."""
