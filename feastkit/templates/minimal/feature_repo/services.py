"""Feature services: what each model version reads, by name.

Tags: `model` names the label recipe `feastkit train` uses (fraud | churn, feastkit/recipes.py);
`decisions` the positive and negative labels a prediction returns. A new version is a new service
(e.g. fraud_minimal_v2 with more views): train it and it is served on /v1/predict/<service>.
"""

from feast import FeatureService
from features import user_spending

fraud_minimal_v1 = FeatureService(
    name="fraud_minimal_v1",
    features=[user_spending],
    description="Fraud model v1: the user's recent card spending.",
    tags={"model": "fraud", "version": "1", "decisions": "fraud,legit"},
)
