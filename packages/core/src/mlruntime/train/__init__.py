"""What every trainer shares: feature checks and batches, the GBDT estimator base, the
train-function distributor and batch inference."""
