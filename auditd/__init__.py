"""The traffic auditor sidecar: every packet a sliver sends, mapped to its slice and owners.

Ingest (:mod:`auditd.ingest`) reads the admin sniffer's record stream into SQLite
(:mod:`auditd.store`); pages on node:80 (:mod:`auditd.web`) answer "who sent this?".
"""
