"""Layer apply (planner + executor), decompression and the walking differ."""
