"""Calls between processes of one node: XML-RPC over unix sockets and the identity of the
peer at the other end. Standard library only; service images get this package whole."""
