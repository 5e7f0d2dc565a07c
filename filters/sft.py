"""SFT validation: does a row fit the model that will be fine-tuned on it?

Every row's ``messages`` is rendered with the target tokenizer's chat template (the recipe's
``output.target_tokenizer``; default: the generating model's, or the embedded model's for an
endpoint or the test engine). ``n_tokens`` and ``fits_context`` (against ``output.max_seq_len``,
default the engine's ``max_model_len``) become columns. A row whose template does not render is
``sft:template_error``; one that does not fit is ``sft:too_long``. The run adds this step to the
accept bucket itself, after the recipe's filters, so every published row has ``n_tokens``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from synthflow.errors import UserError
from synthflow.filtering import Filter
from synthflow.model import public_model_name
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register


def load_tokenizer(name: str) -> Any:
    """``AutoTokenizer.from_pretrained(name)``, without importing ``transformers.models.auto`` (about
    5 s in every process that checks lengths) when a local folder names its tokenizer class: the
    class it names is loaded, as AutoTokenizer would (a test checks both give the same ids)."""
    import transformers

    config = Path(name).expanduser() / "tokenizer_config.json"
    if config.is_file():
        cls_name = json.loads(config.read_text()).get("tokenizer_class")
        cls = getattr(transformers, cls_name, None) if isinstance(cls_name, str) else None
        if cls is not None and hasattr(cls, "from_pretrained"):
            return cls.from_pretrained(name)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


class SFTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: str | None = Field(None, description="local folder or HF id (default: see module)")
    max_seq_len: int | None = Field(None, gt=0, description="default: the engine's max_model_len")


def default_tokenizer(recipe: Any) -> str:
    """The generating model's tokenizer when it is a local vLLM model, else the embedded model's."""
    from synthflow.model import default_model_dir, resolve_model

    if recipe is not None and recipe.engine.name == "vllm":
        return resolve_model(recipe.engine.model)
    return str(default_model_dir())


@register("filter", "sft")
class SFTCheck(Filter):
    name = "sft"
    stage = "accept"
    Params = SFTParams
    columns: ClassVar[dict[str, pa.DataType]] = {"n_tokens": pa.int64(), "fits_context": pa.bool_()}

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        recipe = getattr(self.ctx, "recipe", None)
        self.tokenizer_name = self.params.tokenizer or default_tokenizer(recipe)
        self.max_seq_len = self.params.max_seq_len or (recipe.engine.max_model_len if recipe else 2048)
        p = Path(self.tokenizer_name).expanduser()
        looks_local = p.is_absolute() or self.tokenizer_name.startswith(".") or p.exists()
        if looks_local and not (p / "tokenizer_config.json").is_file():
            hint = (
                ""
                if self.params.tokenizer
                else " (run `synthflow prepare-model`, or set output.target_tokenizer)"
            )
            raise UserError(
                f"output.target_tokenizer: {p} is not a tokenizer folder (no tokenizer_config.json){hint}"
            )
        self._tok: Any = None  # loaded on first use: importing transformers takes seconds
        self.lengths: list[int] = []
        self.too_long = 0
        self.template_errors = 0

    @property
    def tok(self) -> Any:
        if self._tok is None:
            try:
                self._tok = load_tokenizer(self.tokenizer_name)
            except Exception as e:  # noqa: BLE001 - many kinds (missing folder, no network, bad files)
                raise UserError(
                    f"output.target_tokenizer: cannot load tokenizer {self.tokenizer_name!r} "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
                ) from None
            if not getattr(self._tok, "chat_template", None):
                raise UserError(f"output.target_tokenizer: {self.tokenizer_name!r} has no chat template")
        return self._tok

    def _ids(self, conv: Any) -> Any:
        out = self.tok.apply_chat_template(conv, tokenize=True, return_dict=True)
        return out["input_ids"]

    def _lengths(self, convs: list[list[dict[str, str]]]) -> list[int | str]:
        """Token count per conversation, or the error type when its template does not render."""
        _ = self.tok  # a load error is the user's (one line), not a row's
        try:
            return [len(x) for x in self._ids(convs)]
        except Exception:  # noqa: BLE001 - one bad row must not fail the batch: find it
            out: list[int | str] = []
            for c in convs:
                try:
                    out.append(len(self._ids(c)))
                except Exception as e:  # noqa: BLE001
                    out.append(type(e).__name__)
            return out

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        if not records:
            return res
        for r, n in zip(records, self._lengths([list(r.messages) for r in records]), strict=True):
            if isinstance(n, str) or not r.messages:
                self.template_errors += 1
                res.rejects.append(Reject(r, self.stage, f"sft:template_error:{n if n else 'no_messages'}"))
                continue
            r.fields["n_tokens"] = n
            r.fields["fits_context"] = n <= self.max_seq_len
            if n > self.max_seq_len:
                self.too_long += 1
                res.rejects.append(Reject(r, self.stage, f"sft:too_long ({n}>{self.max_seq_len})"))
                continue
            self.lengths.append(n)
            res.kept.append(r)
        return res

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "tokenizer": self.tokenizer_name,
            "max_seq_len": self.max_seq_len,
            "too_long": self.too_long,
            "template_errors": self.template_errors,
        }
        if self.lengths:
            s = sorted(self.lengths)
            d.update(
                min=s[0],
                median=statistics.median(s),
                p95=s[min(len(s) - 1, int(0.95 * len(s)))],
                max=s[-1],
            )
        return d

    def card_section(self, accepted: list[Record]) -> str:
        """Token lengths of the published rows under the target tokenizer, for the dataset card."""
        n = sorted(int(r.fields["n_tokens"]) for r in accepted if r.fields.get("n_tokens") is not None)
        lines = [
            "## Token lengths",
            "",
            f"Rendered with the chat template of `{public_model_name(self.tokenizer_name)}`; "
            f"`max_seq_len` {self.max_seq_len}. "
            f"Rows over it are rejects (`sft:too_long`: {self.too_long}); rows whose template did not "
            f"render are `sft:template_error` ({self.template_errors}).",
            "",
        ]
        if n:
            lines += [
                "| rows | min | median | p95 | max |",
                "|---|---|---|---|---|",
                f"| {len(n)} | {n[0]} | {statistics.median(n):g} | {n[min(len(n) - 1, int(0.95 * len(n)))]} | {n[-1]} |",
            ]
        else:
            lines.append("No published rows.")
        return "\n".join(lines) + "\n"
