# pruning tests
