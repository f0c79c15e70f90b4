"""Bench2Drive closed loop: leaderboard agent for RAP, PID, routes, metrics, CARLA runner, embedded simulator."""
