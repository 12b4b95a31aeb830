"""cqox-platform: the reliability side of CQOx as a Dagster code location.

Everything in this package except ``definitions.py`` is plain Python (the core and the resources); the
Dagster assets and sensors live in the top-level ``assets`` and ``sensors`` packages.
"""

__version__ = "0.1.0"
