"""High availability: Patroni's REST API, cluster-state checks, switchover and reinit, partition drills."""
