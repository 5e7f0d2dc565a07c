"""Math verifiers: ``math_pot`` (a PAL program and its stated answer) and ``template``
(TemplateGSM variants)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pydantic import Field

from filters.verify import Check, Verifier, VerifyParams, numeric, verdict_columns, verdict_reason
from synthflow.record import Record
from synthflow.registry import register
from synthflow.sandbox import Job, Verdict


class MathPotParams(VerifyParams):
    percent_equals_fraction: bool = Field(True, description="does '50%' also equal 0.5?")
    sc_min_agreement: float = Field(
        0.75, ge=0, le=1, description="share of self-consistency samples that must agree (3 of 4)"
    )


def verify_math_pot(records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
    """Program of thought: run ``solution()`` and compare with the stated answer using math-verify.

    ``solution`` must be the function its one ``def`` makes (not a lambda, a second def, a
    decorator's result or anything rebound at run time: ``verify:rebound_entry_point``), the program
    must be plain (``verify:forbidden_construct``), and its value a number
    (``verify:non_numeric_answer``). It must compute: the program runs again with the problem's
    numbers changed, two ways, and must give another value at least once
    (``verify:trivial_program:constant_under_perturbation``; ``29 + 1 + 0 * boxes`` or a helper
    returning 30 gives the same value whatever the numbers are).

    With self-consistency samples (``fields['sc_programs']``: k programs written for the published
    problem without its answer in view) every sample runs too and votes with its value; the main
    program does not vote. Votes are grouped by exact value (12 significant digits for floats, ints
    whole) and compared with math-verify. The row passes only when the votes' majority is unique (a
    tie rejects), equals the stated answer, and at least ``sc_min_agreement`` of the k samples agree
    with it. A sample that does not compile, fails, returns no number or is trivial counts against.

    A row with a ``reference_answer`` (a persona rewrite of a seed problem with a known answer) must
    also compute that answer: ``verify:reference_mismatch``.

    First, a program that only states its answer (a literal or constant return, a value computed
    from none of the problem's numbers, the stated answer written into the code) is rejected
    without running: ``verify:trivial_program:<why>`` (``synthflow.trivial``)."""
    from synthflow.mathcheck import as_text, equivalent, single_answer
    from synthflow.trivial import perturbations, trivial_reason

    trivial = {
        i: why
        for i, r in enumerate(records)
        if (why := trivial_reason(r.fields.get("problem", ""), r.fields["program"], r.fields.get("answer")))
    }
    jobs, owners = [], []

    def job(code: str) -> Job:
        return Job(code=code, call="solution()", entry_point="solution", timeout_s=p.timeout_s)

    for i, r in enumerate(records):
        if i in trivial:
            continue
        jobs.append(job(r.fields["program"]))
        owners.append((i, "main", -1))
        for k, prog in enumerate(perturbations(r.fields.get("problem", ""), r.fields["program"])):
            jobs.append(job(prog))
            owners.append((i, "perturbed", k))
        for k, prog in enumerate(r.fields.get("sc_programs") or []):
            # a sample that only states a number does not vote (it counts against agreement)
            if prog and not trivial_reason(r.fields.get("problem", ""), prog):
                jobs.append(job(prog))
                owners.append((i, "sample", k))
    verdicts = executor.run(jobs)
    main_of: dict[int, Verdict] = {}
    perturbed: dict[int, list[Verdict]] = {}
    samples: dict[int, dict[int, Verdict]] = {}
    for (i, role, k), v in zip(owners, verdicts, strict=True):
        if role == "main":
            main_of[i] = v
        elif role == "perturbed":
            perturbed.setdefault(i, []).append(v)
        else:
            samples.setdefault(i, {})[k] = v
    out = []
    mode = getattr(executor, "mode", "")
    for i, r in enumerate(records):
        if i in trivial:
            v = Verdict(
                "fail",
                exc_type="TrivialProgram",
                message=f"solution() does not compute its answer from the problem ({trivial[i]})",
                mode=mode,
            )
            out.append(Check(False, f"verify:trivial_program:{trivial[i]}", verdict_columns("math_pot", v)))
            continue
        main = main_of[i]
        if main.status != "pass":
            out.append(Check(False, verdict_reason(main), verdict_columns("math_pot", main)))
            continue
        stated = r.fields.get("answer")
        details: dict[str, Any] = {"stated": stated}
        if not single_answer(stated):
            vc = verdict_columns("math_pot", main, **details)
            vc["status"] = "fail"
            vc["message"] = f"the stated answer {str(stated)[:60]!r} is not one number"
            out.append(Check(False, "verify:ambiguous_answer", vc))
            continue
        if not numeric(main):
            vc = verdict_columns("math_pot", main, **details)
            vc["status"] = "fail"
            vc["message"] = f"solution() returned {main.value_repr[:80]}, not a number"
            out.append(Check(False, "verify:non_numeric_answer", vc))
            continue
        value = main.value
        ok = equivalent(stated, value, p.percent_equals_fraction)
        reason = "" if ok else "verify:answer_mismatch"
        pert = perturbed.get(i, [])
        if pert:
            moved = [x for x in pert if numeric(x) and not equivalent(as_text(value), x.value)]
            details["perturbed"] = [x.value_repr[:40] if x.status == "pass" else x.status for x in pert]
            if ok and not moved:
                ok, reason = False, "verify:trivial_program:constant_under_perturbation"
        # a problem with a known answer (a persona rewrite of a seed problem keeps its numbers and
        # question): the program must compute that answer, not only the one the row states
        ref = r.fields.get("reference_answer") or None
        if ref is not None:
            details["reference"] = ref
            if ok and not equivalent(ref, value, p.percent_equals_fraction):
                ok, reason = False, "verify:reference_mismatch"
        progs = r.fields.get("sc_programs") or []
        if progs:
            got = samples.get(i, {})
            votes = [
                as_text(v.value) if (v := got.get(k)) is not None and numeric(v) else None
                for k in range(len(progs))
            ]
            ranked = Counter(x for x in votes if x is not None).most_common()
            agree = sum(
                1 for x in votes if x is not None and equivalent(stated, x, p.percent_equals_fraction)
            )
            r.fields["sc_votes"] = votes
            r.fields["sc_agreement"] = round(agree / len(votes), 4)
            tie = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
            r.fields["sc_majority"] = ranked[0][0] if ranked and not tie else None
            details.update(
                sc_votes=votes, sc_agreement=r.fields["sc_agreement"], sc_majority=r.fields["sc_majority"]
            )
            if ok:
                if not ranked:
                    ok, reason = False, "verify:self_consistency_no_votes"
                elif tie:
                    ok, reason = False, "verify:self_consistency_tie"
                elif not equivalent(stated, ranked[0][0], p.percent_equals_fraction):
                    ok, reason = False, "verify:self_consistency_disagrees"
                elif r.fields["sc_agreement"] < p.sc_min_agreement:
                    ok, reason = False, "verify:self_consistency_weak"
        vc = verdict_columns("math_pot", main, **details)
        if not ok:
            vc["status"] = "fail"
            vc["message"] = (
                f"program returned {main.value_repr[:80]}, answer says {stated!r}"
                + (f", the source problem's answer is {ref!r}" if ref is not None else "")
            ) + (f"; samples voted {r.fields.get('sc_votes')}" if progs else "")
            if reason == "verify:trivial_program:constant_under_perturbation":
                vc["message"] = (
                    f"solution() returns {main.value_repr[:40]} whatever the problem's numbers are"
                )
        out.append(Check(ok, reason, vc))
    return out


@register("verifier", "math_pot")
class MathPot(Verifier):
    name = "math_pot"
    Params = MathPotParams
    reads = frozenset({"problem", "program", "answer"})  # sc_programs, reference_answer: when present
    columns = {"sc_votes": pa.list_(pa.string()), "sc_majority": pa.string(), "sc_agreement": pa.float64()}

    def __call__(self, records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
        return verify_math_pot(records, executor, p)


_COUNT_Q = re.compile(r"\bhow\s+many\b", re.I)
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def variant_problem(r: Record, v: Verdict) -> str:
    """'' when a template variant's verdict gives a usable answer, else why not."""
    from synthflow.mathcheck import is_whole

    if v.status != "pass":
        return verdict_reason(v).replace("verify:", "verify:variant_failed:", 1)
    x = v.value
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "verify:variant_non_numeric"
    if isinstance(x, float) and not math.isfinite(x):
        return "verify:variant_non_finite"
    if x < 0:
        return "verify:variant_negative"
    if _COUNT_Q.search(r.fields.get("problem") or "") and not is_whole(x):
        return "verify:non_integer_count"  # a "how many" question needs a whole number
    words = r.fields.get("solution")
    if words:
        from synthflow.mathcheck import equivalent

        nums = _LAST_NUMBER.findall(words)
        if not nums or not equivalent(nums[-1].replace(",", ""), x):
            return "verify:solution_mismatch"  # the worded solution ends on another number
    return ""


def verify_template(records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
    """TemplateGSM: run each variant's program on its assignment; the value is the answer. A variant
    whose program fails, or whose answer is non-numeric, non-finite, negative, a fraction for a "how
    many" question, or not the number its worded solution ends on, is rejected on its own. A whole
    template goes only when more than half of its variants fail, or when 3+ variants all give the
    same answer (the variables do not matter), or (anchored) when its program on the seed's own
    values does not return the seed's known answer."""
    from synthflow.mathcheck import as_text, equivalent, is_whole

    jobs = [
        Job(
            code=r.fields["program"],
            call=f"solution(**{json.loads(r.fields['assignment'])!r})",
            entry_point="solution",
            timeout_s=p.timeout_s,
        )
        for r in records
    ]
    # anchored templates: the program on the seed's own values, once per template
    anchored: dict[str, Record] = {}
    for r in records:
        if r.fields.get("seed_answer") and r.fields.get("seed_values"):
            anchored.setdefault(r.fields["template_id"], r)
    seed_jobs = [
        Job(
            code=r.fields["program"],
            call=f"solution(**{json.loads(r.fields['seed_values'])!r})",
            entry_point="solution",
            timeout_s=p.timeout_s,
        )
        for r in anchored.values()
    ]
    verdicts_all = executor.run(jobs + seed_jobs)
    verdicts, seed_verdicts = verdicts_all[: len(jobs)], verdicts_all[len(jobs) :]
    own = [variant_problem(r, v) for r, v in zip(records, verdicts, strict=True)]
    by_tmpl: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_tmpl.setdefault(r.fields["template_id"], []).append(i)
    whole: dict[str, str] = {}
    for (tid, r), v in zip(anchored.items(), seed_verdicts, strict=True):
        if not (numeric(v) and equivalent(r.fields["seed_answer"], v.value)):
            whole[tid] = "verify:seed_answer_mismatch"  # the template is not the seed problem it came from
    for tid, idx in by_tmpl.items():
        if tid in whole:
            continue
        ok = [i for i in idx if not own[i]]
        if len(ok) * 2 < len(idx):
            whole[tid] = "verify:template_mostly_fails"
        elif len(ok) >= 3 and len({as_text(verdicts[i].value) for i in ok}) == 1:
            whole[tid] = "verify:degenerate:constant"
    out = []
    for i, (r, v) in enumerate(zip(records, verdicts, strict=True)):
        reason = own[i] or whole.get(r.fields["template_id"], "")
        if not reason:
            x = v.value
            r.fields["answer"] = str(int(x)) if is_whole(x) else str(round(float(x), 6))
        vc = verdict_columns("template", v, assignment=r.fields["assignment"])
        if reason:
            vc["status"] = "fail" if v.status == "pass" else v.status
        out.append(Check(not reason, reason, vc))
    return out


@register("verifier", "template")
class Template(Verifier):
    name = "template"
    reads = frozenset(
        {"problem", "program", "assignment", "template_id"}
    )  # seed_values, seed_answer: anchored
    columns = {"answer": pa.string()}  # the variant's answer: its program's value

    def __call__(self, records: Sequence[Record], executor: Any, p: Any) -> list[Check]:
        return verify_template(records, executor, p)
