"""The constraints verifier: every constraint a row lists is checked on its answer by code.

The checkers are IFEval's reference implementation (trusted code: no sandbox), in strict mode, and
stricter where a response could game them (``synthflow.constraints.check``: met only inside an HTML
comment or a code block, a ``---`` rule or an ``*emphasis*`` line counted as a bullet, a word count
padded with numbers or symbols). A row that fails any constraint is a reject
``verify:constraint_failed:<id>`` (the first failed id; ``constraint_results`` has each verdict).
The summary and the dataset card count, per instruction id, how many rows were checked and passed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa

from synthflow import constraints as cat
from synthflow.filtering import Filter
from synthflow.record import Record, Reject, StageResult
from synthflow.registry import register


@register("filter", "constraints")
class ConstraintCheck(Filter):
    name = "constraints"
    stage = "verify"
    columns: ClassVar[dict[str, pa.DataType]] = {
        "constraint_results": pa.list_(pa.bool_()),  # one verdict per id of instruction_id_list
        "constraint_failures": pa.list_(pa.string()),  # '<id>:<why>' for each failed constraint
    }

    @classmethod
    def reads_of(cls, params: Any, text_field: str = "messages") -> set[str]:
        return {"instruction", "response", "instruction_id_list", "kwargs"}

    def __init__(self, params: Any = None, ctx: Any = None):
        super().__init__(params, ctx)
        self.checked: Counter = Counter()
        self.passed: Counter = Counter()

    def __call__(self, records: Sequence[Record]) -> StageResult:
        res = StageResult()
        for r in records:
            f = r.fields
            ids = list(f.get("instruction_id_list") or [])
            kwargs = list(f.get("kwargs") or [])
            if not ids or len(kwargs) != len(ids):
                res.rejects.append(Reject(r, self.stage, "verify:no_constraints"))
                continue
            results = cat.check_all(
                ids, kwargs, str(f.get("response") or ""), str(f.get("instruction") or "")
            )
            f["constraint_results"] = [x.ok for x in results]
            f["constraint_failures"] = [f"{x.id}:{x.why}" for x in results if not x.ok]
            for x in results:
                self.checked[x.id] += 1
                self.passed[x.id] += x.ok
            failed = next((x for x in results if not x.ok), None)
            if failed is None:
                res.kept.append(r)
            else:
                res.rejects.append(Reject(r, self.stage, f"verify:constraint_failed:{failed.id}"))
        return res

    def summary(self) -> dict[str, Any]:
        return {
            "checked": dict(sorted(self.checked.items())),
            "passed": dict(sorted(self.passed.items())),
        }

    def card_section(self, accepted: list[Record]) -> str:
        """Coverage per instruction id: rows checked, rows whose answer met it, rows published."""
        if not self.checked:
            return ""
        published = Counter(c for r in accepted for c in r.fields.get("instruction_id_list") or [])
        lines = [
            "## Constraint coverage\n",
            "| instruction id | checked | met | published |",
            "|---|---:|---:|---:|",
        ]
        for cid in sorted(self.checked):
            lines.append(f"| `{cid}` | {self.checked[cid]} | {self.passed[cid]} | {published[cid]} |")
        return "\n".join(lines) + "\n"
