"""Side-by-side benchmarks: ctrappliance vs containerd 1.6.20 (python -m bench)."""
