"""NAVSIM PDM scoring without nuplan-devkit.

Modules: `simulator` (batch LQR tracker + kinematic bicycle), `pdm_closed` (IDM proposals, route context),
`route` (PDM route search: correction, starting lane, Dijkstra, centerline path), `scorer` (PDMS v1 / EPDMS v2 sub-scores), `comfort`, `world` (occupancy and drivable-area maps; the map itself
comes from `navsim_agents.data.maps`), `metric_cache` (versioned .npz cache), `pdm_score` (one trajectory against a
cache), `evaluate` (rows, CSV layout, resume).
"""
