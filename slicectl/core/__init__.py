"""Pure decisions: errors, units, rspecs, admission, the plans for containers, HTB classes
and firewall rules, record formats. No I/O; imports only the standard library and PyYAML.
Service images and slivers' agents get this package whole."""
