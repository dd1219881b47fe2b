"""Analyses: one module per analysis, each a pure function ``(model, data, **options) -> xr.Dataset``.

The registry (:mod:`landscape.analyses.registry`) maps names to those functions and their
options dataclasses; :func:`landscape.analyze` runs them over checkpoint folders. Analysis
modules are imported lazily, so importing this package stays cheap.
"""

from landscape.analyses.registry import (
    Analysis,
    DataOptions,
    analysis_names,
    get_analysis,
    parse_analyses,
    register_analysis,
    resolve_options,
    unregister_analysis,
)

__all__ = [
    "Analysis",
    "DataOptions",
    "analysis_names",
    "get_analysis",
    "parse_analyses",
    "register_analysis",
    "resolve_options",
    "unregister_analysis",
]
