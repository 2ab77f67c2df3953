"""gsched: a carbon- and price-aware job scheduler daemon for GPU servers."""

__version__ = "0.1.0"
