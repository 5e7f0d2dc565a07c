"""A cheap scorer distilled from an expensive label (the FineWeb-Edu pattern).

``synthflow train-scorer`` fits a scikit-learn model on labelled rows (a judge score, a verdict, a
human label, IFD) and saves it to a folder; the ``sklearn:DIR`` scorer then writes ``score_clf`` for
every row at tens of thousands of rows per second on one core.

Features (stateless, so nothing but the estimator is fitted):
- hashed words of the instruction (its first 32), of the response's start (first 48) and its end
  (last 8 words, as words and pairs): the end of a response is where truncation shows;
- cheap numbers: lengths, distinct-word share, repetition of the response's last 64 words (loops run
  to the end), terminal punctuation, a function word as the last word, evasive or placeholder
  phrases, unbalanced code fences or brackets.

The folder holds ``scorer.json`` (format, feature spec, label, training-data fingerprint, metrics),
``vocab.json`` and ``model.npz``: the linear model's weights as plain float arrays, loaded with
``allow_pickle=False``, so loading a scorer never executes code (and needs neither scikit-learn nor
pickle at scoring time).

Size: training, saving, loading and scoring share one feature function and one file format; they
stay together so that a scorer trained here is always read back with the same features.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from synthflow.errors import UserError
from synthflow.record import Record
from synthflow.registry import register
from synthflow.scoring import Scorer, ScorerParams, instruction_response

FORMAT = "synthflow-scorer"
FORMAT_VERSION = 1
FEATURES_VERSION = 1
MAX_VOCAB = 200_000
HEAD = 32  # words of the response's start that are features
INSTR = 4  # first words of the instruction (the kind of task) that are features
HEAD_CHARS = 300  # the windows read at each end of a response
TAIL_CHARS = 500
META = "scorer.json"
MODEL = "model.npz"
VOCAB = "vocab.json"

# literal phrases (substring tests on the lowercased text: a regex here cost 3x the whole row)
_EVASIVE = (
    "as an ai",
    "i'm an ai",
    "i am an ai",
    "i'm just an ai",
    "as a language model",
    "i am a language model",
    "i cannot help",
    "i can't help",
    "i cannot assist",
    "i can't assist",
    "i cannot provide",
    "i can't provide",
    "i cannot answer",
    "i can't answer",
    "i am unable to",
    "i'm unable to",
    "i'm sorry, but",
    "i am sorry, but",
    "i apologize, but",
    "please consult a",
    "it depends on many factors",
    "it depends on various factors",
)
_EVASIVE_BY_KEY = tuple(
    (k, tuple(p for p in _EVASIVE if k in p))
    for k in ("an ai", "language model", "i can", "unable", "sorry", "apologize", "consult", "depends")
)
assert all(any(k in p for k, _ in _EVASIVE_BY_KEY) for p in _EVASIVE), "every evasive phrase needs a key"
_PLACEHOLDER = ("[insert", "lorem ipsum", "to be continued", "todo:", "(todo", "# todo", "[your ", "<your ")
_FUNCTION_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "that",
        "this",
        "these",
        "those",
        "which",
        "who",
        "whom",
        "whose",
        "than",
        "then",
        "if",
        "because",
        "so",
        "such",
        "its",
        "their",
        "his",
        "her",
        "our",
        "your",
        "my",
        "into",
        "onto",
        "about",
        "over",
        "under",
        "between",
        "while",
        "when",
        "where",
    ]
)
_TERMINAL = tuple(".!?\"')]}`*>:;")
NUMERIC = (
    "instruction_chars_log",
    "response_chars_log",
    "length_ratio_log",
    "tail_distinct_words",
    "tail_repetition",
    "ends_terminal",
    "unterminated_length",
    "ends_function_word",
    "evasive",
    "placeholder",
    "odd_code_fences",
    "odd_quotes",
    "unbalanced_parentheses",
    "empty_response",
    "non_ascii",
)


def row_features(instruction: str, response: str) -> tuple[list[str], list[float]]:
    """Token features and the numeric features of one pair. The hot loop of ``score_clf``: it reads
    a bounded window at each end of the response, so its cost does not grow with the response."""
    iw = instruction[:80].lower().split()[:INSTR]
    low_head = response[:HEAD_CHARS].lower()
    head = low_head.split()
    if len(response) > HEAD_CHARS:
        head.pop()  # the window may cut the last word
    if len(response) > TAIL_CHARS:
        low_tail = response[-TAIL_CHARS:].lower()
        last64 = low_tail.split()[1:][-64:]
    else:
        low_tail = response.lower()
        last64 = low_tail.split()[-64:]
    tail = last64[-8:]
    toks = ["i:" + w for w in iw]
    toks += head[:HEAD]
    toks += ["t:" + w for w in tail]
    toks += ["u:" + a + " " + b for a, b in zip(tail[-5:], tail[-4:], strict=False)]
    stripped = response.rstrip()
    toks.append("c:" + stripped[-1:])  # the last character: where a cut shows
    last_line = stripped[stripped.rfind("\n") + 1 :][-120:]
    toks.append("l:" + str(min(len(last_line.split()), 12)))
    # loops run to the end of a response: the distinct share of its last 64 words shows them
    distinct = len(set(last64)) / len(last64) if last64 else 0.0
    l32 = last64[-32:]
    rep = 1.0 - len(set(zip(l32, l32[1:], l32[2:], strict=False))) / (len(l32) - 2) if len(l32) > 8 else 0.0
    last = tail[-1].strip("\"'()[]{}*`.,;:!?") if tail else ""
    terminal = 1.0 if stripped.endswith(_TERMINAL) else 0.0
    ends = low_head + "\n" + low_tail  # where refusals, excuses and placeholders stand
    n = math.log1p(len(response)) / 10
    ni = math.log1p(len(instruction)) / 10
    # every number is kept near [0, 1] by fixed scales (no fitted scaler: rare tokens must not be
    # blown up to the weight of a numeric feature)
    nums = [
        ni,
        n,
        n - ni,
        distinct,
        rep,  # word triples repeated among the last 32 words
        terminal,
        (1.0 - terminal) * n,  # a long response that stops mid-sentence was cut
        1.0 if last in _FUNCTION_WORDS else 0.0,
        1.0 if _evasive(ends) else 0.0,
        1.0 if _placeholder(ends) else 0.0,
        1.0 if response.count("```") % 2 else 0.0,
        1.0 if response.count('"') % 2 else 0.0,
        1.0 if response.count("(") != response.count(")") else 0.0,
        0.0 if last64 else 1.0,
        0.0 if response.isascii() else 1.0,
    ]
    return toks, nums


def _evasive(t: str) -> bool:
    # a cheap key first; only the phrases that contain a key that is present are scanned
    for k, phrases in _EVASIVE_BY_KEY:
        if k in t:
            for p in phrases:
                if p in t:
                    return True
    return False


def _placeholder(t: str) -> bool:
    if not ("[" in t or "lorem" in t or "continued" in t or "todo" in t or "<your" in t):
        return False
    return any(p in t for p in _PLACEHOLDER)


def tokenize(pairs: Sequence[tuple[str, str]]) -> tuple[list[list[str]], np.ndarray]:
    toks, nums = [], []
    for instr, resp in pairs:
        t, x = row_features(instr, resp)
        toks.append(t)
        nums.append(x)
    return toks, np.asarray(nums, dtype=np.float64).reshape(len(nums), len(NUMERIC))


def build_vocab(token_lists: list[list[str]], max_size: int = MAX_VOCAB, min_df: int = 2) -> dict[str, int]:
    """Tokens in at least ``min_df`` training rows, most frequent first (ties by token)."""
    df: Counter = Counter()
    for toks in token_lists:
        df.update(set(toks))
    kept = sorted((t for t, c in df.items() if c >= min_df), key=lambda t: (-df[t], t))[:max_size]
    return {t: i for i, t in enumerate(kept)}


def featurize(pairs: Sequence[tuple[str, str]], vocab: dict[str, int], chunk: int = 4096) -> Any:
    """A sparse matrix: the row's known tokens (binary, L2-normalized), then the numeric features.
    A dict lookup per token, not a hash: this is the hot loop of ``score_clf``."""
    import scipy.sparse as sp

    v = len(vocab)
    known = vocab.keys()
    parts = []
    for start in range(0, max(len(pairs), 1), chunk):
        toks, nums = tokenize(pairs[start : start + chunk])
        indptr = [0]
        indices: list[int] = []
        data: list[float] = []
        for row in toks:
            ids = [vocab[t] for t in known & row]  # set operations in C: the row's known tokens
            indices += ids
            if ids:
                data += [1.0 / math.sqrt(len(ids))] * len(ids)
            indptr.append(len(indices))
        text = sp.csr_matrix(
            (np.asarray(data, dtype=np.float64), np.asarray(indices, dtype=np.int64), np.asarray(indptr)),
            shape=(len(toks), v),
        )
        parts.append(sp.hstack([text, sp.csr_matrix(nums)], format="csr"))
    return parts[0] if len(parts) == 1 else sp.vstack(parts, format="csr")


# ---- training ------------------------------------------------------------------------------------
def label_task(values: list[Any], threshold: float | None, where: str) -> tuple[str, np.ndarray]:
    """``binary`` (bools, 0/1, or numbers cut at ``threshold``) or ``regression`` (other numbers)."""
    try:
        y = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in values if not isinstance(v, (int, float, bool)))
        raise UserError(f"{where}: labels must be numbers or booleans, got {bad!r}") from None
    if threshold is not None:
        return "binary", (y >= threshold).astype(np.int64)
    if set(np.unique(y)) <= {0.0, 1.0}:
        return "binary", y.astype(np.int64)
    return "regression", y


def make_estimator(task: str) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge

    return LogisticRegression(C=4.0, max_iter=3000) if task == "binary" else Ridge(alpha=1.0)


def cross_validate(task: str, X: Any, y: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated AUC (binary) or Spearman (regression), out-of-fold."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    if task == "binary":
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        pred = cross_val_predict(make_estimator(task), X, y, cv=cv, method="predict_proba")[:, 1]
        return {"metric": "auc", "value": round(float(roc_auc_score(y, pred)), 4), "folds": folds}
    cv = KFold(folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(make_estimator(task), X, y, cv=cv)
    rho = spearmanr(y, pred).statistic
    return {"metric": "spearman", "value": round(float(rho), 4), "folds": folds}


def data_fingerprint(pairs: Sequence[tuple[str, str]], y: np.ndarray) -> str:
    h = hashlib.sha256()
    for (i, r), v in zip(pairs, y.tolist(), strict=True):
        h.update(json.dumps([i, r, v]).encode())
    return h.hexdigest()[:16]


@dataclass
class DistilledModel:
    """A linear model over the features: weights, bias, token vocabulary and metadata."""

    coef: np.ndarray
    intercept: float
    vocab: dict[str, int]
    meta: dict[str, Any]

    def predict(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        z = featurize(pairs, self.vocab) @ self.coef + self.intercept
        if self.meta["task"] == "binary":
            return 1.0 / (1.0 + np.exp(-z))
        return z


def train(
    pairs: Sequence[tuple[str, str]],
    labels: list[Any],
    threshold: float | None = None,
    folds: int = 5,
    where: str = "train-scorer",
) -> DistilledModel:
    task, y = label_task(labels, threshold, where)
    if task == "binary":
        counts = np.bincount(y, minlength=2)
        if counts.min() < folds:
            raise UserError(
                f"{where}: need at least {folds} rows of each class, have {int(counts[0])} negative "
                f"and {int(counts[1])} positive"
            )
    elif len(y) < 2 * folds:
        raise UserError(f"{where}: need at least {2 * folds} labelled rows, have {len(y)}")
    toks, _ = tokenize(pairs)
    vocab = build_vocab(toks)
    X = featurize(pairs, vocab)
    metrics = cross_validate(task, X, y, folds)
    metrics["rows"] = len(y)
    if task == "binary":
        metrics["positives"] = int(y.sum())
    meta = {
        "task": task,
        "threshold": threshold,
        "features": {"version": FEATURES_VERSION, "vocabulary": len(vocab), "numeric": list(NUMERIC)},
        "training": {"rows": len(y), "fingerprint": data_fingerprint(pairs, y)},
        "metrics": metrics,
    }
    est = make_estimator(task).fit(X, y)
    coef = np.asarray(est.coef_, dtype=np.float64).ravel()
    intercept = float(np.asarray(est.intercept_, dtype=np.float64).ravel()[0])
    return DistilledModel(coef, intercept, vocab, meta)


def save(model_dir: Path, model: DistilledModel) -> Path:
    """Write ``scorer.json``, ``vocab.json`` and ``model.npz`` into a new folder, then rename it
    into place (an existing scorer folder is replaced whole; any other folder is refused)."""
    import sklearn

    model_dir = Path(model_dir)
    if model_dir.exists() and not (model_dir / META).is_file():
        raise UserError(f"{model_dir}: exists and is not a synthflow scorer; choose another --out")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model.meta,
        "sklearn_version": sklearn.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=f".{model_dir.name}."))
    try:
        np.savez(tmp / MODEL, coef=model.coef, intercept=np.array([model.intercept]))
        (tmp / VOCAB).write_text(json.dumps(sorted(model.vocab, key=model.vocab.__getitem__)))
        (tmp / META).write_text(json.dumps(meta, indent=2))
        old = None
        if model_dir.exists():
            old = model_dir.with_name(f".{model_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(model_dir, old)
        os.replace(tmp, model_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.meta = meta
    return model_dir


def read_meta(model_dir: Path, where: str = "") -> dict[str, Any]:
    prefix = f"{where}: " if where else ""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"{prefix}{model_dir}: scorer folder not found")
    try:
        meta = json.loads((model_dir / META).read_text())
    except FileNotFoundError:
        raise UserError(
            f"{prefix}{model_dir}: not a synthflow scorer (no {META}; make one with train-scorer)"
        ) from None
    except ValueError:
        raise UserError(f"{prefix}{model_dir}/{META}: not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{prefix}{model_dir}: not a synthflow scorer ({META} has no format {FORMAT!r})")
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        raise UserError(
            f"{prefix}{model_dir}: scorer format version {v!r}; this synthflow reads version {FORMAT_VERSION}"
        )
    if (meta.get("features") or {}).get("version") != FEATURES_VERSION or meta.get("task") not in (
        "binary",
        "regression",
    ):
        raise UserError(f"{prefix}{model_dir}: features or task this synthflow does not know; retrain it")
    return meta


def load(model_dir: Path, where: str = "") -> DistilledModel:
    """Load a scorer safely: JSON and float arrays (``allow_pickle=False``); anything else, such as
    a pickled object in the weights file, is a one-line error and nothing in it runs."""
    prefix = f"{where}: " if where else ""
    meta = read_meta(model_dir, where)
    path = Path(model_dir) / MODEL
    if not path.is_file():
        raise UserError(f"{prefix}{model_dir}: no {MODEL}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != {"coef", "intercept"}:
                raise ValueError(f"arrays {sorted(z.files)}, expected coef and intercept")
            coef, intercept = z["coef"], z["intercept"]
        words = json.loads((Path(model_dir) / VOCAB).read_text())
    except Exception as e:  # many types (a pickled object, a corrupt zip, bad JSON): one line
        raise UserError(f"{prefix}{model_dir}: not a loadable scorer ({type(e).__name__}: {e})") from None
    if coef.dtype != np.float64 or coef.ndim != 1 or intercept.dtype != np.float64 or intercept.shape != (1,):
        raise UserError(f"{prefix}{path}: weights must be float64 arrays")
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UserError(f"{prefix}{model_dir}/{VOCAB}: not a list of tokens")
    vocab = {w: i for i, w in enumerate(words)}
    if coef.shape[0] != len(vocab) + len(NUMERIC):
        raise UserError(
            f"{prefix}{model_dir}: model has {coef.shape[0]} weights, features are {len(vocab) + len(NUMERIC)}"
        )
    return DistilledModel(coef, float(intercept[0]), vocab, meta)


def content_hash(model_dir: Path) -> str:
    """What the recipe fingerprint hashes: the scorer's files, not its path."""
    h = hashlib.sha256()
    for name in (META, VOCAB, MODEL):
        p = Path(model_dir) / name
        h.update(name.encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    return h.hexdigest()[:16]


# ---- the scorer ------------------------------------------------------------------------------------
class SklearnParams(ScorerParams):
    model: str = Field(..., description="folder written by synthflow train-scorer")


@register("scorer", "sklearn")
class SklearnScorer(Scorer):
    """``score_clf``: P(good) for a binary label, the predicted value for a numeric one."""

    name = "sklearn"
    Params = SklearnParams
    outputs = ("clf",)
    arg_param = "model"

    def __init__(self, params: Any, ctx: Any):
        super().__init__(params, ctx)
        self.model_dir = Path(self.params.model).expanduser()
        self.model = load(self.model_dir, f"{ctx.where}.sklearn")

    @classmethod
    def fingerprint_part(cls, params: Any) -> Any:
        return {"model_sha": content_hash(Path(params.model).expanduser())}

    def score(self, records: Sequence[Record]) -> None:
        if not records:
            return
        values = self.model.predict([instruction_response(r) for r in records])
        for r, v in zip(records, values.tolist(), strict=True):
            r.scores["clf"] = round(float(v), 6)

    def summary(self) -> dict[str, Any]:
        m = self.meta.get("metrics") or {}
        return {
            "model": str(self.model_dir),
            "task": self.meta["task"],
            "cv": f"{m.get('metric')} {m.get('value')}",
        }
