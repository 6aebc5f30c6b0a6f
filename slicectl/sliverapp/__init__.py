"""A program a privileged sliver runs: a zip application of standard-library-only modules
carried in the sliver's initscript (``bundle``), and the sliver host root makes for it
through the node manager's socket (``install``). The node agent and the lease service are
two such programs."""
