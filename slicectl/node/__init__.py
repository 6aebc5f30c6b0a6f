"""What acts on a node: the node manager and what it drives (store, engine, network,
accounts, sshd), the host daemons (shim, admin sniffer) and the node's service sidecars."""
