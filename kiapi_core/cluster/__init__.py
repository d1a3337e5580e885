"""Cluster mode: several kiapi hosts behind one endpoint, sharing one PostgreSQL database.

``KIAPI_CLUSTER_URL=postgresql://...`` turns it on. Without it nothing here is imported by the
host and the embedded default (SQLite + local disk) is unchanged. The interfaces
(:mod:`.interfaces`) are framework-free; :mod:`.pg` holds the PostgreSQL implementations and is
the only place that imports psycopg (the optional ``kiapi-core[cluster]`` extra).
"""
