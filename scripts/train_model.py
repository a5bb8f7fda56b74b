"""Trains tripline's fraud models on features computed by tripline itself.

Run through `scripts/train-model`, which installs the Python packages and
produces the feature file with `tripline replay --features` (the same code
that computes features in the service, so training and serving agree).

Protocol (Le Borgne et al., Reproducible Machine Learning for Credit Card
Fraud Detection, chapter 5): train on one week, skip the next week (fraud
labels arrive 7 days late), test on the week after, and drop from each test
day the cards already known to be compromised (fraud seen in the training
week or in the delay period up to the day before the test day minus the
delay). Metrics: AUC ROC, average precision, and card precision@100 (the
share of compromised cards among the 100 cards ranked riskiest each day, a
card found on one day left out of the later ones, averaged over the test
days).

`train_model.py fit --train CSV --kind rf|lr --inputs A,B,... --out FILE`
fits one model on a training set that `tripline train` built and writes
it as ONNX; `tripline train` embeds this file and runs that mode.

Writes the random forest and the logistic regression as ONNX (with their
input names in the metadata property `tripline.features`), a model card per
model, and `tests/data/model-check.csv`: feature rows with scikit-learn's own
probabilities, against which the Rust evaluators are tested.
"""

import argparse
import csv
import datetime as dt
import json
import pathlib
import sys

import numpy as np
import onnx
import sklearn
import skl2onnx
from skl2onnx import to_onnx
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

FEATURES = [
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
]

# The random forest the latency target names: 100 trees of depth 8.
RF_PARAMS = dict(n_estimators=100, max_depth=8, min_samples_leaf=20, max_features=0.5, random_state=0, n_jobs=-1)
LR_PARAMS = dict(C=0.1, max_iter=1000, random_state=0)
# The tree ensemble `tripline train` retrains a forest with (`fit --kind
# rf`): extremely randomized trees, deeper. Over the 16 weekly folds of five
# simulated months (scripts/recipe-folds) it scores AUC 0.882 / AP 0.694 /
# CP@100 0.307 where RF_PARAMS scores 0.875 / 0.656 / 0.303.
RETRAIN_PARAMS = dict(n_estimators=100, max_depth=16, min_samples_leaf=3, max_features=0.7, random_state=0, n_jobs=-1)
DELAY_DAYS = 7
WEEK = 7


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{path}: no rows")
    missing = [c for c in FEATURES + ["TX_FRAUD", "TX_TIME_DAYS", "CUSTOMER_ID"] if c not in rows[0]]
    if missing:
        sys.exit(f"{path}: missing columns {missing}")
    x = np.array([[float(r[c]) for c in FEATURES] for r in rows], dtype=np.float64)
    y = np.array([int(float(r["TX_FRAUD"])) for r in rows])
    day = np.array([int(float(r["TX_TIME_DAYS"])) for r in rows])
    card = np.array([int(float(r["CUSTOMER_ID"])) for r in rows])
    return x, y, day, card


def split(y, day, card, train_start):
    """The handbook's train/test split (`get_train_test_set`)."""
    train = (day >= train_start) & (day < train_start + WEEK)
    known = set(card[train & (y == 1)])
    test = np.zeros_like(train)
    for d in range(WEEK):
        test_day = train_start + WEEK + DELAY_DAYS + d
        # Frauds of the day that is now `DELAY_DAYS` old are known by then.
        delay_day = train_start + WEEK + d - 1
        known |= set(card[(day == delay_day) & (y == 1)])
        on_day = day == test_day
        test |= on_day & ~np.isin(card, list(known))
    return train, test


def card_precision_at(k, scores, y, day, card):
    """The handbook's card precision@k (`card_precision_top_k`): each test
    day, the cards not found on an earlier day are ranked by their highest
    score of the day; the share of the top k with a fraud that day is the
    day's precision, and those cards count as found from the next day. The
    mean over the days. Ties rank by card, as core/src/model/metrics.rs does."""
    found = set()
    out = []
    for d in sorted(np.unique(day)):
        m = day == d
        per_card = {}
        for s, f, c in zip(scores[m], y[m], card[m]):
            if c in found:
                continue
            ps, pf = per_card.get(c, (float("-inf"), 0))
            per_card[c] = (max(ps, s), max(pf, f))
        ranked = sorted(per_card.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
        caught = [c for c, (_, f) in ranked if f]
        out.append(len(caught) / k)
        found.update(caught)
    return float(np.mean(out))


def metrics(scores, y, day, card):
    return {
        "auc_roc": round(float(roc_auc_score(y, scores)), 3),
        "average_precision": round(float(average_precision_score(y, scores)), 3),
        "card_precision_at_100": round(card_precision_at(100, scores, y, day, card), 3),
    }


# The inputs a card-keyed rule can have in the service, where each key's
# features are computed on that key's partitions: no terminal features.
CARD_FEATURES = FEATURES[:9]


def models():
    """name -> (estimator, inputs)."""
    return {
        "fraud_rf": (RandomForestClassifier(**RF_PARAMS), FEATURES),
        "fraud_lr": (LogisticRegression(**LR_PARAMS), FEATURES),
        "card_rf": (RandomForestClassifier(**RF_PARAMS), CARD_FEATURES),
    }


def columns(inputs):
    return [FEATURES.index(f) for f in inputs]


class Standardized:
    """Logistic regression on standardized features, folded into one linear
    model over the raw features (so the ONNX graph is a single
    LinearClassifier)."""

    def __init__(self, lr):
        self.lr = lr

    def fit(self, x, y):
        self.mean = x.mean(axis=0)
        self.std = x.std(axis=0)
        self.std[self.std == 0] = 1.0
        self.lr.fit((x - self.mean) / self.std, y)
        folded = LogisticRegression()
        folded.classes_ = self.lr.classes_
        folded.coef_ = self.lr.coef_ / self.std
        folded.intercept_ = self.lr.intercept_ - (self.lr.coef_ * self.mean / self.std).sum(axis=1)
        folded.n_features_in_ = x.shape[1]
        self.folded = folded
        return self

    def predict_proba(self, x):
        return self.folded.predict_proba(x)


def fit(name, est, x, y):
    if isinstance(est, LogisticRegression):
        return Standardized(est).fit(x, y)
    return est.fit(x.astype(np.float32), y)


def exported(m):
    return m.folded if isinstance(m, Standardized) else m


def proba(m, x):
    if isinstance(m, Standardized):
        return m.predict_proba(x)[:, 1]
    return m.predict_proba(x.astype(np.float32))[:, 1]


def day_name(start, days):
    return (start + dt.timedelta(days=int(days))).isoformat()


def fit_main(argv):
    """`train_model.py fit`: fits one model on a training set that
    `tripline train` built (feature columns and `label`) and writes it as
    ONNX. tripline scores and evaluates it itself."""
    ap = argparse.ArgumentParser(prog="train_model.py fit")
    ap.add_argument("--train", required=True, help="CSV: the inputs' columns and `label` (0/1)")
    ap.add_argument("--kind", required=True, choices=["rf", "lr"])
    ap.add_argument("--inputs", required=True, help="comma-separated input columns, in order")
    ap.add_argument("--out", required=True, help="the ONNX file to write")
    args = ap.parse_args(argv)
    inputs = args.inputs.split(",")
    with open(args.train, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{args.train}: no rows")
    missing = [c for c in inputs + ["label"] if c not in rows[0]]
    if missing:
        sys.exit(f"{args.train}: missing columns {missing}")
    x = np.array([[float(r[c]) for c in inputs] for r in rows], dtype=np.float64)
    y = np.array([int(r["label"]) for r in rows])
    if len(set(y)) < 2:
        sys.exit(f"{args.train}: the training set needs both frauds and genuine transactions")
    est = LogisticRegression(**LR_PARAMS) if args.kind == "lr" else ExtraTreesClassifier(**RETRAIN_PARAMS)
    m = fit(args.kind, est, x, y)
    write_onnx(m, x, inputs, args.out)


def write_onnx(m, x, inputs, path):
    sample = x[:1].astype(np.float32)
    onx = to_onnx(exported(m), sample, options={id(exported(m)): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    meta = onx.metadata_props.add()
    meta.key = "tripline.features"
    meta.value = ",".join(inputs)
    onnx.save_model(onx, str(path))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "fit":
        return fit_main(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="CSV from `tripline replay --features`")
    ap.add_argument("--out", default="models", help="where models and cards go")
    ap.add_argument("--check", default="tests/data/model-check.csv")
    ap.add_argument("--data-name", default="handbook transactions_2018-04")
    ap.add_argument("--folds", default="9,2", help="evaluation folds' training start days (day 0 = first day)")
    ap.add_argument("--ship-start", type=int, default=None,
                    help="the shipped models' training start day (default: the last week whose labels "
                         "have all arrived by the data's last day)")
    ap.add_argument("--first-day", default="2018-04-01")
    args = ap.parse_args()
    start = dt.date.fromisoformat(args.first_day)
    x, y, day, card = load(args.features)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    folds = [int(s) for s in args.folds.split(",")]
    results = {name: [] for name in models()}
    results["random"] = []
    shipped = {}
    rng = np.random.default_rng(0)
    for i, t0 in enumerate(folds):
        train, test = split(y, day, card, t0)
        if not test.any() or not train.any():
            sys.exit(f"fold starting day {t0}: empty train or test set")
        fold = {
            "train": [day_name(start, t0), day_name(start, t0 + WEEK - 1)],
            "test": [day_name(start, t0 + WEEK + DELAY_DAYS), day_name(start, t0 + 2 * WEEK + DELAY_DAYS - 1)],
            "train_rows": int(train.sum()),
            "train_frauds": int(y[train].sum()),
            "test_rows": int(test.sum()),
            "test_frauds": int(y[test].sum()),
        }
        for name, (est, inputs) in models().items():
            cols = columns(inputs)
            m = fit(name, est, x[train][:, cols], y[train])
            s = proba(m, x[test][:, cols])
            results[name].append({**fold, **metrics(s, y[test], day[test], card[test])})

        s = rng.random(int(test.sum()))
        results["random"].append({**fold, **metrics(s, y[test], day[test], card[test])})

    # The shipped models learn from the latest week the data allows: the
    # week whose labels have all arrived (DELAY_DAYS) by the last day. Its
    # own test week lies beyond the data; the folds above are the recipe's
    # held-out figures.
    last_day = int(day.max())
    ship_start = args.ship_start if args.ship_start is not None else last_day - DELAY_DAYS - WEEK + 1
    ship = (day >= ship_start) & (day < ship_start + WEEK)
    if not ship.any() or len(set(y[ship])) < 2:
        sys.exit(f"the shipping week starting day {ship_start} has no frauds or no genuine transactions")
    ship_fold = {
        "train": [day_name(start, ship_start), day_name(start, ship_start + WEEK - 1)],
        "train_rows": int(ship.sum()),
        "train_frauds": int(y[ship].sum()),
        "labels_known": day_name(start, last_day),
    }
    for name, (est, inputs) in models().items():
        cols = columns(inputs)
        shipped[name] = (fit(name, est, x[ship][:, cols], y[ship]), ship_fold, inputs)

    check_rows = rng.choice(len(y), size=2000, replace=False)
    check_rows.sort()
    for name, (m, fold, inputs) in shipped.items():
        write_onnx(m, x[:1][:, columns(inputs)], inputs, out / f"{name}.onnx")
        card_path = out / f"{name}.md"
        card_path.write_text(model_card(name, m, fold, inputs, results[name], results["random"], args))
        print(f"wrote {out / (name + '.onnx')} and {card_path}")

    probas = [proba(m, x[check_rows][:, columns(inputs)]) for m, _, inputs in shipped.values()]
    with open(args.check, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FEATURES + [f"{n}_proba" for n in shipped])
        for i, r in enumerate(check_rows):
            w.writerow([repr(float(v)) for v in x[r]] + [repr(float(p[i])) for p in probas])
    print(f"wrote {args.check}")
    print(json.dumps(results, indent=2))


def model_card(name, m, fold, inputs, folds, random, args):
    est = m.lr if isinstance(m, Standardized) else m
    kind = type(est).__name__
    params = LR_PARAMS if name == "fraud_lr" else RF_PARAMS
    lines = [
        f"# Model card: `{name}`",
        "",
        f"{kind} (scikit-learn {sklearn.__version__}, exported with skl2onnx {skl2onnx.__version__}),",
        "scoring the probability that a card transaction is fraud. Written by",
        "`scripts/train-model`; do not edit by hand.",
        "",
        f"- Parameters: `{json.dumps({k: v for k, v in params.items() if k != 'n_jobs'})}`"
        + ("; features standardized on the training week, folded into the coefficients" if name == "fraud_lr" else ""),
        f"- Data: {args.data_name}; features from `tripline replay --features` with `rules/features.tl`",
        f"- Training window: {fold['train'][0]} to {fold['train'][1]} ({fold['train_rows']} transactions, "
        f"{fold['train_frauds']} frauds): the latest week whose labels, {DELAY_DAYS} days late, had all "
        f"arrived by the data's last day, {fold['labels_known']}",
        f"- Output: probability of fraud (class 1), read by rules as `{name}` (see docs/rules.md, Models)",
        "",
        "## Inputs (in this order, ONNX metadata `tripline.features`)",
        "",
    ]
    lines += [f"{i + 1}. `{f}`" for i, f in enumerate(inputs)]
    if name == "card_rf":
        lines += ["", "Card features only: a card-keyed rule can read it in the service, where a key's",
                  "features are computed on that key's partitions (terminal features are not there)."]
    lines += [
        "",
        "## Evaluation",
        "",
        f"The handbook's protocol: train one week, skip {DELAY_DAYS} days, test the following week without",
        "the cards already known to be compromised. Each row is one fold of the same recipe; the shipped",
        "model itself trained on a later week, whose test week lies beyond the data.",
        "",
        "| train | test | test rows (frauds) | AUC ROC | AP | CP@100 | random AP | random CP@100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, r in zip(folds, random):
        lines.append(
            f"| {f['train'][0]} – {f['train'][1]} | {f['test'][0]} – {f['test'][1]} | "
            f"{f['test_rows']} ({f['test_frauds']}) | {f['auc_roc']} | {f['average_precision']} | "
            f"{f['card_precision_at_100']} | {r['average_precision']} | {r['card_precision_at_100']} |"
        )
    lines += [
        "",
        "Hyperparameters (`min_samples_leaf`, `max_features` of the forests) were picked among seven",
        "settings by the first fold's figures: 30 days leave no separate validation week, so the first",
        "fold's figures are somewhat optimistic; the second fold had no say in the choice.",
        "",
        "Published figures for this protocol on the handbook's 183-day data (four folds): AP 0.62–0.69,",
        "CP@100 0.30. Those folds have months of history behind every window; here the data holds",
        "30 days, so the 30-day windows of the first fold's training week are partly empty.",
        "",
        "## Limits",
        "",
        "- Trained on simulated data (three fraud scenarios); not a model for real card traffic.",
        "- Terminal features depend on labels 7 days old; a terminal compromised this week is",
        "  caught by amount and the card's own history only.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
