"""Private nodes for tests and benches, and the multi-node testbed. Product code never
imports this package."""
