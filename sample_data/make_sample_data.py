"""Make the bundled sample data: genuine logits of a real model on a real dataset.

scikit-learn's handwritten digits (1797 images, 10 classes) and a one-vs-rest
logistic regression; each row's logits come from 5-fold cross-validation
(``cross_val_predict``), so every prediction is out-of-fold, as in a real
validation run.  Writes, next to this script:

* ``digits_preds.parquet``  - one float32 logit column per class (``digit_0`` ..)
* ``digits_labels.parquet`` - one bool target column per class, plus ``id``
* ``digits_logits.npy`` / ``digits_targets.npy`` - the same as (N, 10) arrays
* ``digits_preds_new.parquet`` - a candidate model's logits, as ``digits_preds.parquet``
  (the same model with weaker regularisation, C=0.5: for ``bce compare``)

Run: ``python sample_data/make_sample_data.py`` (needs scikit-learn).
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def out_of_fold_logits(X, labels, C: float) -> np.ndarray:
    model = make_pipeline(StandardScaler(),
                          OneVsRestClassifier(LogisticRegression(C=C, max_iter=2000)))
    logits = cross_val_predict(model, X, labels, cv=5, method="decision_function")
    return logits.astype(np.float32)


def main() -> None:
    data = load_digits()
    X, labels = data.data, data.target
    Y = np.eye(10, dtype=bool)[labels]
    logits = out_of_fold_logits(X, labels, 0.05)
    names = [f"digit_{k}" for k in range(10)]
    pq.write_table(pa.table({n: logits[:, k] for k, n in enumerate(names)}),
                   HERE / "digits_preds.parquet")
    cols = {"id": np.arange(len(labels), dtype=np.int64)}
    cols.update({n: Y[:, k] for k, n in enumerate(names)})
    pq.write_table(pa.table(cols), HERE / "digits_labels.parquet")
    np.save(HERE / "digits_logits.npy", logits)
    np.save(HERE / "digits_targets.npy", Y.astype(np.float32))
    new = out_of_fold_logits(X, labels, 0.5)
    pq.write_table(pa.table({n: new[:, k] for k, n in enumerate(names)}),
                   HERE / "digits_preds_new.parquet")


if __name__ == "__main__":
    main()
