"""Embedded closed-loop simulator for Bench2Drive agents (no CARLA server needed).

world.py (road geometry, actors, synthetic routes per ability), dynamics.py (ego bicycle model, IDM traffic),
monitors.py (the leaderboard's criteria), sensors.py (leaderboard input_data, cameras from the RAP rasterizer),
expert.py (scripted controllers), simulator.py (route runner writing the leaderboard's results JSON).
"""
