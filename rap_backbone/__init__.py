"""The RAP planner with a swappable image backbone, its 3D rasterizer and driving corruptions."""
