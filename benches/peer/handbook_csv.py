# The handbook's transactions (JSON Lines on stdin) as the CSV FeatureBench.java reads:
# TRANSACTION_ID,CUSTOMER_ID,epoch ms of TX_DATETIME (UTC),TX_AMOUNT
import datetime
import json
import sys

for line in sys.stdin:
    e = json.loads(line)
    t = datetime.datetime.fromisoformat(e["TX_DATETIME"]).replace(tzinfo=datetime.timezone.utc)
    ms = int(t.timestamp() * 1000)
    print(f"{e['TRANSACTION_ID']},{e['CUSTOMER_ID']},{ms},{e['TX_AMOUNT']}")
