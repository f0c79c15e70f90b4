"""NAVSIM PDM scoring without nuplan-devkit.

Modules: `pdm_simulator` (batch LQR tracker + kinematic bicycle), `pdm_closed` (IDM proposals, route context),
`route` (PDM route search: correction, starting lane, Dijkstra, centerline path), `scorer` (PDMS v1 / EPDMS v2 sub-scores), `comfort`, `observation` (occupancy and drivable-area maps; the map itself
comes from `navsim_agents.data.maps`), `metric_cache` (builds a token's cache), `metric_cache_file` (the
`MetricCache` container and its versioned .npz file), `pdm_score` (one trajectory against a
cache), `evaluate` (rows, CSV layout, resume).
"""
