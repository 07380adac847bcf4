"""`lipsync bench`: both deployment shapes side by side on loopback, one run, one table."""
