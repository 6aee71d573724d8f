"""Pages served by the caption server (package data)."""
