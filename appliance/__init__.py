"""ctrappliance: a containerd-compatible container daemon."""

try:
    from ._version import __version__
except ImportError:  # a source tree that was never built
    __version__ = "0.0.0+unbuilt"
