"""ScaleDist: scalable, topology- and bandwidth-aware data distribution (US 2006/0126201)."""

__version__ = "0.1.0"
