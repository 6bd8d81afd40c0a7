"""Benchmarks of homecloud on the local lab (scripts, not tests): see bench/deploy.py."""
