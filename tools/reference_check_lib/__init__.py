"""The parts of tools/reference_check.py (issue #28 item 6); that script is the entry point."""
