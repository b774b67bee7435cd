"""Versioned feature services: what each model version reads, by name.

Tags: `model` names the label recipe training uses (fraud | churn, feastkit/recipes.py);
`decisions` the positive and negative labels a prediction returns.
"""

from churn_features import customer_activity
from feast import FeatureService
from fraud_features import merchant_risk_stats, user_realtime_activity, user_transaction_stats
from on_demand import transaction_request_features

fraud_detection_v1 = FeatureService(
    name="fraud_detection_v1",
    features=[user_transaction_stats, merchant_risk_stats, transaction_request_features],
    description="Fraud model v1: user spending stats, merchant risk and request-time features.",
    owner="fraud-ml@feastkit.dev",
    tags={"model": "fraud", "version": "1", "decisions": "fraud,legit"},
)

fraud_detection_v2 = FeatureService(
    name="fraud_detection_v2",
    features=[user_transaction_stats, merchant_risk_stats, transaction_request_features,
              user_realtime_activity],
    description="Fraud model v2: v1 plus last-10-minute burst counters from the push source.",
    owner="fraud-ml@feastkit.dev",
    tags={"model": "fraud", "version": "2", "decisions": "fraud,legit"},
)

churn_prediction_v1 = FeatureService(
    name="churn_prediction_v1",
    features=[customer_activity],
    description="Churn model v1: purchase frequency, trend, recency, basket value and returns.",
    owner="growth-ml@feastkit.dev",
    tags={"model": "churn", "version": "1", "decisions": "likely_churn,likely_stay"},
)
