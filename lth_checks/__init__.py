"""lth-checks: re-verify the claims of "Unmasking the Lottery Ticket Hypothesis" by experiment."""

__version__ = "0.1.0"
