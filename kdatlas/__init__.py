"""kdatlas: a survey-as-code knowledge base for knowledge distillation of large language models.

The engine: the typed taxonomy model, loader and validator, the bibliography, page generation,
the command line and the runner. The methods themselves live in the ``reference_impls`` package.
"""

__version__ = "0.1.0"
