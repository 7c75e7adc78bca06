"""The data layer: sources, the DataConnector, batching and type conversion.

It describes and reads tables as Arrow; it never imports Ray, and knows nothing of the
warehouse, storage or workers (those layers build on it).
"""
