"""Data sources: the raw event tables the views aggregate.

`clean_events("<table>")` is a Feast FileSource over `<FEASTKIT_DATA_DIR>/clean/<table>.parquet`,
the table `feastkit validate` (and `feastkit compute`) writes from the raw events.
"""

from feastkit.declarations import clean_events

transactions = clean_events(
    "transactions", description="Card transactions: user, merchant, amount, channel, device, time.")
