"""Generated protocol code (see proto/generate.py)."""
