"""claimsutil: the helper package of the claims foundation-model scaling study."""

__version__ = "0.1.0"
