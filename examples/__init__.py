"""Example handler packages used by the topologies in `topologies/`."""
