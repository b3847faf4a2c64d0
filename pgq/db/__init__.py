"""The one database seam: named queries, connections, the LISTEN connection."""
