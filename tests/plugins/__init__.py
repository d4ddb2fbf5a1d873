"""Plugins the execution tests run (folders) and the helpers those tests share (harness.py)."""
