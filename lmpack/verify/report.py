"""What `lmpack verify` found, and how it is judged and shown.

This module holds the result types (one `Check` per kind of evidence, a `VerifyResult` for the
file), the logit metrics and the per-dtype thresholds they are judged against, and the two views
of a result: a rich report for people and a JSON document with stable keys for machines.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

# The checks in the order they run; every one appears in the JSON, "skip" when it did not run.
CHECKS = ("structure", "checksums", "tokenizer", "values", "config", "tensors", "logits")
CHECK_TITLES = {  # what each check establishes (docs/VERIFY.md has the details)
    "structure": "preamble, header, directory, bounds and shapes are valid",
    "checksums": "the CRC-32C of the tokenizer and of every tensor match",
    "tokenizer": "the tokenizer loads, fits the vocabulary, round-trips; templates render",
    "values": "floats are finite, q8_0 scales finite and quants in [-127, 127]",
    "config": "config and tokenizer equal the source's",
    "tensors": "every tensor is the source's, cast exactly or within the Q8_0 bound",
    "logits": "the runtime's logits match an independent reference forward pass",
}
JSON_VERSION = 1
MAX_PROBLEMS = 50  # listed per check; the count says how many there were in all


@dataclass
class Problem:
    """One thing wrong, and with which tensor (None when it is about the whole file)."""

    message: str
    tensor: str | None = None


@dataclass
class Check:
    name: str
    status: str = "skip"  # "pass" | "fail" | "skip"
    summary: str = ""
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str, tensor: str | None = None) -> None:
        self.status = "fail"
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(message, tensor))

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "what": CHECK_TITLES[self.name], "summary": self.summary, "seconds": round(self.seconds, 4),
                "problem_count": self.problem_count,
                "problems": [{"tensor": p.tensor, "message": p.message} for p in self.problems],
                "data": _json_safe(self.data)}


# --------------------------------------------------------------------------------------------
# Logit metrics


@dataclass
class LogitMetrics:
    """How the file's logits compare with the reference's over the same token ids."""

    tokens: int
    ref_logit_std: float
    max_abs_error: float
    max_abs_error_rel_std: float  # max |file - ref| / std(ref logits)
    top1_agreement: float  # fraction of positions whose argmax agree
    kl_mean: float  # KL(ref || file) in nats, mean over positions
    kl_max: float  # ... and the worst position
    ppl_reference: float  # perplexity of the ids' next tokens under the reference
    ppl_file: float
    ppl_rel_diff: float  # |ppl_file / ppl_reference - 1|


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray, ids: list[int]) -> LogitMetrics:
    """Metrics of `got` (the file's logits) against `ref`, both (len(ids), vocab); float64 math."""
    if ref.shape != got.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, file {got.shape}")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    std = float(ref64.std())
    err = float(np.abs(got64 - ref64).max())
    lp_ref, lp_got = _log_softmax(ref64), _log_softmax(got64)
    kl = (np.exp(lp_ref) * (lp_ref - lp_got)).sum(axis=-1)
    top1 = float((ref64.argmax(axis=-1) == got64.argmax(axis=-1)).mean())
    nxt = np.asarray(ids[1:], np.int64)
    if len(nxt):
        rows = np.arange(len(nxt))
        ppl_ref = float(np.exp(-lp_ref[rows, nxt].mean()))
        ppl_got = float(np.exp(-lp_got[rows, nxt].mean()))
    else:
        ppl_ref = ppl_got = float("nan")
    return LogitMetrics(
        tokens=len(ids), ref_logit_std=std, max_abs_error=err,
        max_abs_error_rel_std=err / std if std > 0 else float("inf"),
        top1_agreement=top1, kl_mean=float(kl.mean()), kl_max=float(kl.max()),
        ppl_reference=ppl_ref, ppl_file=ppl_got,
        ppl_rel_diff=abs(ppl_got / ppl_ref - 1.0) if ppl_ref > 0 else float("nan"))


# --------------------------------------------------------------------------------------------
# Thresholds (docs/VERIFY.md says where each number comes from)


@dataclass(frozen=True)
class Thresholds:
    max_error_rel_std: float  # max |file - ref| logit error, in units of std(ref logits)
    min_top1: float  # fraction of positions whose top-1 token agrees
    max_kl_mean: float  # mean KL(ref || file), nats
    max_kl_max: float  # worst single-position KL, nats
    max_ppl_rel_diff: float  # |ppl_file / ppl_ref - 1|

    def judge(self, m: LogitMetrics) -> list[str]:
        """One message per metric outside its threshold (NaN counts as outside)."""
        out = []
        checks = (
            ("max |logit error| / std", m.max_abs_error_rel_std, "<=", self.max_error_rel_std),
            ("top-1 agreement", m.top1_agreement, ">=", self.min_top1),
            ("mean KL", m.kl_mean, "<=", self.max_kl_mean),
            ("max KL", m.kl_max, "<=", self.max_kl_max),
            ("perplexity difference", m.ppl_rel_diff, "<=", self.max_ppl_rel_diff),
        )
        for label, value, op, limit in checks:
            if value != value or (value > limit if op == "<=" else value < limit):
                out.append(f"{label} {_fmt(value)} is not {op} {_fmt(limit)}")
        return out


# Per stored dtype of the weight matrices; a file mixing dtypes is judged by its loosest one.
DEFAULT_THRESHOLDS = {
    "f32": Thresholds(max_error_rel_std=1e-3, min_top1=0.98, max_kl_mean=1e-7, max_kl_max=1e-6,
                      max_ppl_rel_diff=1e-4),
    "f16": Thresholds(max_error_rel_std=0.1, min_top1=0.95, max_kl_mean=5e-4, max_kl_max=5e-3,
                      max_ppl_rel_diff=5e-3),
    "bf16": Thresholds(max_error_rel_std=0.4, min_top1=0.9, max_kl_mean=5e-3, max_kl_max=5e-2,
                       max_ppl_rel_diff=2e-2),
    "q8_0": Thresholds(max_error_rel_std=1.0, min_top1=0.8, max_kl_mean=3e-2, max_kl_max=0.3,
                       max_ppl_rel_diff=5e-2),
}
DTYPE_LOOSENESS = ("f32", "f16", "bf16", "q8_0")


# A mixture-of-experts token near a tie between two experts can switch expert under any rounding
# upstream, moving that one position's logits by about their std: for a lossy file of a MoE the
# single-position error may be this many times the dense limit (means and KL keep theirs).
MOE_MAX_ERROR_FACTOR = 3.0


def thresholds_for(dtype: str, overrides: dict[str, float | None] | None = None, moe: bool = False) -> Thresholds:
    """The default thresholds of `dtype` (widened for a lossy MoE file) with any non-None
    `overrides` (keys: Thresholds fields)."""
    base = DEFAULT_THRESHOLDS[dtype]
    if moe and dtype != "f32":
        base = replace(base, max_error_rel_std=base.max_error_rel_std * MOE_MAX_ERROR_FACTOR)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - {f.name for f in fields(Thresholds)}
    if unknown:
        raise ValueError(f"unknown threshold {sorted(unknown)[0]!r}")
    return replace(base, **{k: float(v) for k, v in given.items()})


# --------------------------------------------------------------------------------------------
# The result


@dataclass
class VerifyResult:
    """Everything `verify` found about one file. `ok` is the verdict."""

    file: str
    against: str | None = None
    dtype: str | None = None  # the loosest stored dtype of the weight matrices
    checks: dict[str, Check] = field(default_factory=lambda: {n: Check(n) for n in CHECKS})
    metrics: LogitMetrics | None = None
    thresholds: Thresholds | None = None
    prompt_tokens: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checks["structure"].status == "pass" and \
            all(c.status != "fail" for c in self.checks.values())

    def failures(self) -> list[str]:
        """One line per problem, for messages and tests."""
        return [f"{c.name}: " + (f"{p.tensor}: " if p.tensor else "") + p.message
                for c in self.checks.values() for p in c.problems]

    def to_json(self) -> dict[str, Any]:
        return {
            "lmpack_verify": JSON_VERSION,
            "file": self.file,
            "against": self.against,
            "ok": self.ok,
            "dtype": self.dtype,
            "checks": {name: self.checks[name].to_json() for name in CHECKS},
            "metrics": _json_safe(asdict(self.metrics)) if self.metrics else None,
            "thresholds": asdict(self.thresholds) if self.thresholds else None,
        }


def _json_safe(x: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


def _fmt(v: float) -> str:
    if v != v:
        return "nan"
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4g}"
    return f"{v:.3g}"


# --------------------------------------------------------------------------------------------
# The report for people


STATUS_STYLE = {"pass": "[bold green]PASS[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


def render(result: VerifyResult, console) -> None:
    """Print the result as rich tables: one row per check, the metrics, then the problems."""
    from rich.table import Table
    from rich.text import Text  # every path, tensor name and message is data, never markup

    t = Table(title=Text(f"lmpack verify {result.file}" + (f" against {result.against}" if result.against else "")),
              title_justify="left")
    t.add_column("check")
    t.add_column("result", justify="center")
    t.add_column("details", overflow="fold")
    t.add_column("time", justify="right")
    for name in CHECKS:
        c = result.checks[name]
        detail = c.summary
        if c.status == "fail" and c.problem_count:
            first = c.problems[0]
            detail = (f"{first.tensor}: " if first.tensor else "") + first.message + \
                (f" (and {c.problem_count - 1} more)" if c.problem_count > 1 else "")
        t.add_row(name, STATUS_STYLE[c.status], Text(detail),
                  f"{c.seconds:.2f}s" if c.status != "skip" else "")
    console.print(t)

    m, th = result.metrics, result.thresholds
    if m is not None and th is not None:
        mt = Table(title=f"logits over {m.tokens} tokens, thresholds for {result.dtype}", title_justify="left")
        for col in ("metric", "value", "threshold", "result"):
            mt.add_column(col, justify="left" if col == "metric" else "right")
        rows = (
            ("max |logit error|", m.max_abs_error, None, None),
            ("  / std of reference logits", m.max_abs_error_rel_std, f"<= {_fmt(th.max_error_rel_std)}",
             m.max_abs_error_rel_std <= th.max_error_rel_std),
            ("top-1 agreement", m.top1_agreement, f">= {_fmt(th.min_top1)}", m.top1_agreement >= th.min_top1),
            ("mean KL(ref || file)", m.kl_mean, f"<= {_fmt(th.max_kl_mean)}", m.kl_mean <= th.max_kl_mean),
            ("max KL(ref || file)", m.kl_max, f"<= {_fmt(th.max_kl_max)}", m.kl_max <= th.max_kl_max),
            ("perplexity, reference", m.ppl_reference, None, None),
            ("perplexity, file", m.ppl_file, None, None),
            ("  relative difference", m.ppl_rel_diff, f"<= {_fmt(th.max_ppl_rel_diff)}",
             m.ppl_rel_diff <= th.max_ppl_rel_diff),
        )
        for label, value, limit, good in rows:
            mt.add_row(label, _fmt(value), limit or "",
                       "" if good is None else STATUS_STYLE["pass" if good else "fail"])
        console.print(mt)

    listed = [(c.name, p) for c in result.checks.values() for p in c.problems]
    if listed:
        pt = Table(title="problems", title_justify="left")
        pt.add_column("check")
        pt.add_column("tensor")
        pt.add_column("problem", overflow="fold")
        for name, p in listed:
            pt.add_row(name, Text(p.tensor or ""), Text(p.message))
        console.print(pt)
    verdict = ("sound", "bold green") if result.ok else ("NOT sound", "bold red")
    console.print(Text.assemble(f"{result.file}: ", verdict), highlight=False)
