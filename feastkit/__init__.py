"""feastkit: an opinionated kit around Feast for real-time fraud and churn prediction."""

__version__ = "0.1.0"
