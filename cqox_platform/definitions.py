"""Composition root of the code location: the only module that imports ``assets`` and ``sensors``."""

import dagster as dg

defs = dg.Definitions()
