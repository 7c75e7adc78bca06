"""The runtime layer: cluster connection, scaling, worker groups, the worker context and the
distributor every trainer launches through. Ray is imported on first use, not here."""
