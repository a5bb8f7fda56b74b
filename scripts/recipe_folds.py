"""Compares training recipes over every weekly fold of a feature file, by the
handbook's protocol (train a week, labels 7 days late, test the week after
without the cards already known) and metrics (train_model.py's).

    python scripts/recipe_folds.py FEATURES.csv FIRST_DAY

FEATURES.csv: `tripline replay --features` with the columns TRANSACTION_ID,
TX_FRAUD, TX_TIME_DAYS, CUSTOMER_ID and TX_AMOUNT copied (`--with`). Folds
start at day FIRST_DAY (of TX_TIME_DAYS) and every 7 days after while a test
week fits. Prints each fold and the mean per recipe.
"""

import sys

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

import train_model as tm

RECIPES = {
    "random forest (RF_PARAMS, the shipped models)": lambda: RandomForestClassifier(**tm.RF_PARAMS),
    "extra trees (RETRAIN_PARAMS, tripline train)": lambda: ExtraTreesClassifier(**tm.RETRAIN_PARAMS),
}


def main():
    x, y, day, card = tm.load(sys.argv[1])
    first = int(sys.argv[2])
    scores = {name: [] for name in RECIPES}
    for start in range(first, day.max() - 20, 7):
        train, test = tm.split(y, day, card, start)
        for name, make in RECIPES.items():
            m = make().fit(x[train].astype(np.float32), y[train])
            p = m.predict_proba(x[test].astype(np.float32))[:, 1]
            r = tm.metrics(p, y[test], day[test], card[test])
            scores[name].append([r["auc_roc"], r["average_precision"], r["card_precision_at_100"]])
            print(f"fold from day {start}: {name}: {r}", flush=True)
    for name, rows in scores.items():
        auc, ap, cp = np.array(rows).mean(axis=0)
        print(f"{name}: {len(rows)} folds, AUC {auc:.3f} AP {ap:.3f} CP@100 {cp:.3f}")


if __name__ == "__main__":
    main()
