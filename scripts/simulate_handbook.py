"""Simulated card transactions by the process the Fraud Detection Handbook
documents (Le Borgne et al., chapter 3, "Transaction data simulator"), for
months beyond the bundled one: 5,000 customers, 10,000 terminals, customers
using the terminals within radius 5, from 2018-04-01, and the three fraud
scenarios (amounts over 220; two terminals compromised per day for 28 days;
three customers per day whose credentials leak for 14 days, a third of their
transactions multiplied by 5).

With the handbook's seeds its April has the 288,062 transactions and 1,702
frauds of ../shared/data/handbook (ties within a second may be numbered in
another order). Writes one `transactions_YYYY-MM.jsonl.gz` per month, the
bundled file's format.

    python scripts/simulate_handbook.py OUT_DIR [DAYS]   # DAYS: 183 (to 2018-09-30)
"""

import datetime
import gzip
import json
import random
import sys

import numpy as np

CUSTOMERS, TERMINALS, RADIUS = 5000, 10000, 5
START = datetime.datetime(2018, 4, 1)


def main():
    out = sys.argv[1]
    days = int(sys.argv[2]) if len(sys.argv) > 2 else 183
    np.random.seed(0)
    customers = []
    for _ in range(CUSTOMERS):
        x, y = np.random.uniform(0, 100), np.random.uniform(0, 100)
        mean = np.random.uniform(5, 100)
        customers.append((x, y, mean, mean / 2, np.random.uniform(0, 4)))
    np.random.seed(1)
    terminals = np.array([[np.random.uniform(0, 100), np.random.uniform(0, 100)] for _ in range(TERMINALS)])
    rows = []
    for c, (x, y, mean, std, per_day) in enumerate(customers):
        near = list(np.where(np.sqrt(np.sum(np.square(np.array([x, y]) - terminals), axis=1)) < RADIUS)[0])
        random.seed(c)
        np.random.seed(c)
        for day in range(days):
            for _ in range(np.random.poisson(per_day)):
                t = int(np.random.normal(86400 / 2, 20000))
                if 0 < t < 86400:
                    amount = np.random.normal(mean, std)
                    if amount < 0:
                        amount = np.random.uniform(0, mean * 2)
                    amount = np.round(amount, decimals=2)
                    if near:
                        rows.append((t + day * 86400, day, c, int(random.choice(near)), float(amount)))
    rows.sort(key=lambda r: r[0])
    secs = np.array([r[0] for r in rows])
    day = np.array([r[1] for r in rows])
    card = np.array([r[2] for r in rows])
    terminal = np.array([r[3] for r in rows])
    amount = np.array([r[4] for r in rows])
    fraud = np.zeros(len(rows), dtype=int)
    fraud[amount > 220] = 1
    for d in range(day.max()):
        hit = np.random.RandomState(d).permutation(TERMINALS)[:2]
        fraud[(day >= d) & (day < d + 28) & np.isin(terminal, hit)] = 1
    for d in range(day.max()):
        hit = np.random.RandomState(d).permutation(CUSTOMERS)[:3]
        theirs = list(np.where((day >= d) & (day < d + 14) & np.isin(card, hit))[0])
        random.seed(d)
        picked = random.sample(theirs, k=int(len(theirs) / 3))
        amount[picked] = amount[picked] * 5
        fraud[picked] = 1
    files = {}
    for i in range(len(rows)):
        t = START + datetime.timedelta(seconds=int(secs[i]))
        month = t.strftime("%Y-%m")
        if month not in files:
            files[month] = gzip.open(f"{out}/transactions_{month}.jsonl.gz", "wt")
        files[month].write(json.dumps({
            "TRANSACTION_ID": i, "TX_DATETIME": t.strftime("%Y-%m-%dT%H:%M:%S"),
            "CUSTOMER_ID": int(card[i]), "TERMINAL_ID": int(terminal[i]),
            "TX_AMOUNT": round(float(amount[i]), 2), "TX_TIME_SECONDS": int(secs[i]),
            "TX_TIME_DAYS": int(day[i]), "TX_FRAUD": int(fraud[i]),
        }) + "\n")
    for f in files.values():
        f.close()
    print(f"{len(rows)} transactions, {fraud.sum()} frauds, months {sorted(files)}")


if __name__ == "__main__":
    main()
