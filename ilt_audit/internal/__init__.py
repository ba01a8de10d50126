"""Private helpers of ilt-audit: not part of the public API."""
