"""The store layer: the DuckDB warehouse session, versioned datasets, sinks, and where files live.

Everything here writes through one atomic-publish helper (:mod:`mlruntime.store.publish`).
"""
