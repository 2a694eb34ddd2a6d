"""The HTTP API: A1111 v1 routes, the v2 jobs API, PNG Info and merging."""
