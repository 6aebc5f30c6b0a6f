"""The site's admin tools (``pl-ps``, ``pl-top``, ``pl-kill``, ``pl-stop``, ``pl-start``,
``pl-cap``, ``pl-tcpdump``, ``pl-audit``), run inside the admin sliver (``site_admin``)
and talking to the node manager's socket, the admin sniffer's and the audit pages.
Standard library only: they travel in the admin sliver's initscript as a zip app.
"""
