"""The reference workload of issue 13: many agent processes on one host, three setups, one report.

Run ``python -m examples.agent_fleet --help``; see docs/results.md.
"""
