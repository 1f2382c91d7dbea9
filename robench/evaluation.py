"""Evaluation: clean accuracy, the eps cascade, and verification of every adversarial.

The harness, not the attack, owns correctness:

* eps-bounded attacks run from the smallest eps up, each only on samples still robust (a
  sample fooled at eps is fooled at every larger eps, since its adversarial lies in the larger
  ball too); clean-misclassified samples are never attacked;
* minimal-norm attacks run once; the curve follows from per-sample perturbation norms;
* every returned example is checked: finite, inside [0, 1], inside the eps ball (within
  :data:`EPS_TOLERANCE`), and re-classified by the model.  An example failing a check counts
  as *not fooled* and makes its row ``invalid``: never silently clipped or projected;
* an example that the attack saw as adversarial (its optional ``last_success``) but that
  fails the harness's re-classification (a different batch shape, TF32 / bf16 / compiled
  kernels) is a *verification mismatch*: the sample is attacked once more on its own and
  otherwise counts as robust; mismatches are counted, never hidden;
* in a low-precision run (bf16, fp16) every adversarial found is re-classified in fp32 as
  well, and disagreements are counted;
* cost is measured, not declared: a hook on the model input counts input gradients and
  forward evaluations per sample.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robench import streams

#: absolute slack allowed on a perturbation norm, for float32 rounding of x + delta
EPS_TOLERANCE = 1e-5
#: slack allowed outside [0, 1]
BOX_TOLERANCE = 1e-6


class CountingModel(nn.Module):
    """Wraps a model to count forward evaluations and input gradients, per sample."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # report the wrapped model's mode (foolbox checks it)
        self.queries = 0
        self.grad_evals = 0

    def reset(self) -> None:
        self.queries = 0
        self.grad_evals = 0

    def _count_grad(self, n: int) -> Callable[[torch.Tensor], None]:
        def hook(_grad: torch.Tensor) -> None:
            self.grad_evals += n

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        self.queries += n
        if x.requires_grad and torch.is_grad_enabled():
            x = x.view_as(x)  # a fresh node, so the hook belongs to this call only
            x.register_hook(self._count_grad(n))
        return self.model(x)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    outs = [model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, dtype=torch.long, device=x.device)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def perturbation_norm(delta: torch.Tensor, threat: str) -> torch.Tensor:
    """Per-sample norm of ``delta`` for ``threat`` (L0 counts changed pixels over channels)."""
    flat = delta.flatten(1)
    if threat == "linf":
        return flat.abs().amax(1)
    if threat == "l2":
        return flat.norm(p=2, dim=1)
    if threat == "l1":
        return flat.abs().sum(1)
    if threat == "l0":
        changed = (delta.abs() > 1e-7).any(dim=1) if delta.ndim == 4 else flat.abs() > 1e-7
        return changed.flatten(1).sum(1).to(delta.dtype)
    return torch.zeros(len(delta), dtype=delta.dtype, device=delta.device)


@dataclass
class Verification:
    """Per-sample outcome of checking an attack's output."""

    valid: torch.Tensor  # bool (N,): passed every check
    fooled: torch.Tensor  # bool (N,): valid and classified as the attack wanted
    norms: torch.Tensor  # float (N,): perturbation norm in the threat's metric
    reasons: Counter = field(default_factory=Counter)


def verify_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    *,
    threat: str,
    eps: float | None,
    target: torch.Tensor | None = None,
    batch_size: int = 256,
) -> Verification:
    """Check every example; never fix one.

    ``eps=None`` (minimal-norm attacks) skips the ball check; the caller compares ``norms``
    with each eps.  A corruption's severity is not a norm, so it has no ball either.
    """
    reasons: Counter = Counter()
    if x_adv.shape != x.shape:
        raise ValueError(f"attack returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}")
    x_adv = x_adv.detach().to(x.dtype)
    finite = torch.isfinite(x_adv).flatten(1).all(1)
    reasons["non-finite"] += int((~finite).sum())
    safe = torch.where(torch.isfinite(x_adv), x_adv, x)
    in_box = ((safe >= -BOX_TOLERANCE) & (safe <= 1 + BOX_TOLERANCE)).flatten(1).all(1)
    reasons["outside-[0,1]"] += int((finite & ~in_box).sum())
    norms = perturbation_norm(safe - x, threat)
    valid = finite & in_box
    if eps is not None and threat in ("linf", "l2", "l1", "l0"):
        in_ball = norms <= eps + EPS_TOLERANCE * max(1.0, eps)
        reasons["outside-eps-ball"] += int((valid & ~in_ball).sum())
        valid &= in_ball
    pred = predict(model, safe, batch_size=batch_size)
    success = pred == target if target is not None else pred != y
    reasons = Counter({k: v for k, v in reasons.items() if v})
    return Verification(valid=valid, fooled=valid & success, norms=norms, reasons=reasons)


def make_targets(
    mode: Any, y: torch.Tensor, logits: torch.Tensor, *, num_classes: int, seed: int,
    sample_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Target classes for a targeted attack: an index, ``random`` or ``least-likely``.

    A random target is drawn from the sample's own stream (the seed and its index in the
    evaluated subset, ``sample_ids``: by default the rows' positions), so it is the same in
    any shard."""
    if isinstance(mode, int) and not isinstance(mode, bool):
        if not 0 <= mode < num_classes:
            raise ValueError(f"target class {mode} is outside 0..{num_classes - 1}")
        return torch.full_like(y, mode)
    if mode == "least-likely":
        return logits.argmin(1)
    if mode == "random":
        ids = torch.arange(len(y)) if sample_ids is None else sample_ids.cpu()
        offset = streams.SampleStreams(streams.sample_seed(seed, "target"), ids).randint(
            1, num_classes, (len(y),)).to(y.device)
        return (y + offset) % num_classes
    raise ValueError(f"target must be a class index, 'random' or 'least-likely', got {mode!r}")


@dataclass
class EpsOutcome:
    """The result of one attack at one eps on the whole evaluation set."""

    eps: float
    robust: torch.Tensor  # bool (n,): correct and not fooled at this eps
    n_invalid: int
    grad_evals: int
    queries: int
    seconds: float
    reasons: Counter
    adversarial: dict[int, torch.Tensor] = field(default_factory=dict)  # index -> x_adv
    #: samples whose example the attack saw as adversarial but verification did not (each
    #: was attacked once more on its own; robust unless that example verified)
    n_verify_mismatch: int = 0
    #: samples fooled at this eps (low-precision verification) whose example the fp32 model
    #: classifies as the attack did not want; 0 when the run is fp32
    n_precision_mismatch: int = 0


def claimed_success(attack: Any, n: int, device: torch.device) -> torch.Tensor | None:
    """Which of the ``n`` examples of its last ``perturb`` call the attack saw as adversarial
    in its own forward passes (its optional ``last_success``, moved to ``device``), or
    ``None`` when the attack does not say.  A claim of the wrong shape or type is a bug in
    the attack."""
    claim = getattr(attack, "last_success", None)
    if claim is None:
        return None
    if not isinstance(claim, torch.Tensor) or claim.dtype != torch.bool or \
            tuple(claim.shape) != (n,):
        raise ValueError(
            f"attack's last_success must be a bool tensor of shape ({n},), got "
            f"{getattr(claim, 'dtype', type(claim).__name__)} "
            f"{tuple(getattr(claim, 'shape', ()))}")
    return claim.detach().to(device)


def reference_disagrees(reference: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                        target: torch.Tensor | None, *, batch_size: int) -> torch.Tensor:
    """Per example: ``reference`` (the fp32 model of a low-precision run) does *not* see it
    as the attack's success (untargeted: still the label; targeted: not the target)."""
    pred = predict(reference, x_adv, batch_size=batch_size)
    return pred != target if target is not None else pred == y


@dataclass
class _ChunkedRun:
    """What one attack call over a set of sample indices found, after verification."""

    fooled: torch.Tensor  # bool (n,): valid and successful
    norms: torch.Tensor  # float (n,): perturbation norms (inf where not fooled)
    invalid: int
    reasons: Counter
    examples: dict[int, torch.Tensor]
    #: bool (n,): the attack's claim failed verification (whatever the re-attack found)
    verify_mismatch: torch.Tensor
    #: bool (n,): fooled, but not so for the fp32 reference model
    precision_mismatch: torch.Tensor


def _attack_indices(
    attack: Any, counting: CountingModel, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
    idx: torch.Tensor, *, eps: float | None, threat: str, target: torch.Tensor | None,
    batch_size: int, keep_examples: int, on_batch: Callable[[], None] | None,
    reference: nn.Module | None = None, sample_ids: torch.Tensor, stream: int = 0,
) -> _ChunkedRun:
    """Run the attack on ``idx`` in batches and verify every returned example.

    Each batch runs with its samples' random streams (``stream`` identifies the work, the
    seed and the eps; ``sample_ids`` are the rows' indices in the evaluated subset) and the
    global generator seeded from ``stream`` and the batch's first sample.

    A verification mismatch (claimed by the attack, valid, not fooled) is attacked once more,
    those samples alone in one batch, and verified again; the re-attack's cost is counted
    like the rest.  With ``reference``, every fooled example is re-classified by it too."""
    zeros = torch.zeros(len(y), dtype=torch.bool, device=x.device)
    run = _ChunkedRun(fooled=zeros.clone(),
                      norms=torch.full((len(y),), float("inf"), device=x.device),
                      invalid=0, reasons=Counter(), examples={},
                      verify_mismatch=zeros.clone(), precision_mismatch=zeros.clone())
    for chunk in idx.split(batch_size):
        tgt = target[chunk] if target is not None else None
        ids = sample_ids[chunk.cpu()]
        x_adv = _perturb_with_streams(attack, counting, x[chunk], y[chunk], eps, tgt, ids,
                                      stream)
        claimed = claimed_success(attack, len(chunk), x.device)
        check = verify_adversarial(model, x[chunk], x_adv, y[chunk], threat=threat, eps=eps,
                                   target=tgt, batch_size=batch_size)
        run.invalid += int((~check.valid).sum())
        run.reasons.update(check.reasons)
        fooled, norms = check.fooled, check.norms
        mismatch = claimed & check.valid & ~check.fooled if claimed is not None else None
        if mismatch is not None and bool(mismatch.any()):
            x_adv, fooled, norms = _reattack(
                attack, counting, model, x[chunk], y[chunk], tgt, x_adv, fooled, norms,
                mismatch, eps=eps, threat=threat, batch_size=batch_size, run=run,
                sample_ids=ids, stream=streams.sample_seed(stream, "again"))
            run.verify_mismatch[chunk] = mismatch
        if reference is not None and bool(fooled.any()):
            disagree = reference_disagrees(reference, x_adv[fooled].detach().to(x.dtype),
                                           y[chunk][fooled],
                                           tgt[fooled] if tgt is not None else None,
                                           batch_size=batch_size)
            run.precision_mismatch[chunk[fooled]] = disagree
        run.fooled[chunk] = fooled
        run.norms[chunk] = torch.where(fooled, norms, run.norms[chunk])
        for j in chunk[fooled].tolist()[: max(0, keep_examples - len(run.examples))]:
            run.examples[j] = x_adv[(chunk == j).nonzero().item()].detach().cpu()
        if on_batch:
            on_batch()
    return run


def _perturb_with_streams(attack: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps: float | None, target: torch.Tensor | None,
                          sample_ids: torch.Tensor, stream: int) -> torch.Tensor:
    """``attack.perturb`` on one batch, with the batch's per-sample streams current and the
    global generator seeded from ``stream`` and the batch's first sample (for draws that are
    not per sample)."""
    if len(sample_ids):
        torch.manual_seed(streams.sample_seed(stream, int(sample_ids[0])))
    with streams.use(streams.SampleStreams(stream, sample_ids)):
        return attack.perturb(model, x, y, eps, target=target)


def _reattack(
    attack: Any, counting: CountingModel, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
    target: torch.Tensor | None, x_adv: torch.Tensor, fooled: torch.Tensor,
    norms: torch.Tensor, mismatch: torch.Tensor, *, eps: float | None, threat: str,
    batch_size: int, run: _ChunkedRun, sample_ids: torch.Tensor, stream: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attack the ``mismatch`` samples of a chunk once more, on their own, and verify the new
    examples: those that verify replace the old ones and count as fooled, the others stay
    robust.  Returns the chunk's examples, fooled mask and norms after the re-attack.

    The attack API has no way to resume from an example, so the re-attack starts afresh (a
    batch of other shape than the first call's, which is what a batch-dependent kernel needs
    to agree with itself).  Its invalid examples are counted like any other."""
    again = mismatch.nonzero().flatten()
    tgt = target[again] if target is not None else None
    retry = _perturb_with_streams(attack, counting, x[again], y[again], eps, tgt,
                                  sample_ids[again.cpu()], stream)
    check = verify_adversarial(model, x[again], retry, y[again], threat=threat, eps=eps,
                               target=tgt, batch_size=batch_size)
    run.invalid += int((~check.valid).sum())
    run.reasons.update(check.reasons)
    x_adv = x_adv.detach().to(x.dtype).clone()
    x_adv[again] = torch.where(check.fooled.view(-1, *[1] * (x.ndim - 1)),
                               retry.detach().to(x.dtype), x_adv[again])
    fooled, norms = fooled.clone(), norms.clone()
    fooled[again] = check.fooled
    norms[again] = check.norms
    return x_adv, fooled, norms


def run_attack_cascade(
    attack: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_correct: torch.Tensor,
    *,
    threat: str,
    kind: str,
    eps_list: list[float],
    target: torch.Tensor | None = None,
    attackable: torch.Tensor | None = None,
    batch_size: int = 256,
    seed: int = 0,
    keep_examples: int = 0,
    on_batch: Callable[[], None] | None = None,
    nested: bool = True,
    attack_model: nn.Module | None = None,
    start_robust: dict[float, torch.Tensor] | None = None,
    reference_model: nn.Module | None = None,
    sample_ids: torch.Tensor | None = None,
) -> list[EpsOutcome]:
    """Attack the correctly classified samples over ``eps_list`` (ascending).

    ``sample_ids`` are the samples' indices in the evaluated subset (by default their
    positions): with ``seed`` and the eps they name each sample's random stream, so a
    shard of the subset gets the same noise as the whole (see :mod:`robench.streams`).

    ``attackable`` (bool mask) excludes samples the attack cannot act on (for a targeted
    attack, those whose label is the target): they keep their clean outcome.  ``nested``
    says the budgets are nested balls, so a sample fooled at one eps is fooled at every
    larger eps and is not attacked again; a corruption's severities are not nested (severity
    4 is another image, not a superset of severity 3), so each runs on every clean-correct
    sample.  ``attack_model`` is what the attack differentiates when it is not ``model``
    itself (an expectation over a randomised defense); verification always uses ``model``.
    ``start_robust`` (eps -> bool mask) restricts each eps to the samples still robust
    there under the attacks run before (an ensemble's members): the outcome is then
    cumulative.  ``reference_model`` (the fp32 model of a bf16 / fp16 run) re-classifies
    every example found; ``n_precision_mismatch`` counts, among the samples that the row
    counts as fooled by this attack, those whose example it does not confirm.
    ``n_verify_mismatch`` counts the examples of this eps's work that the attack claimed and
    verification refused (for a minimal attack, those of its one run, on the first row).
    """
    counting = CountingModel(attack_model if attack_model is not None else model)
    eps_list = sorted(eps_list)
    outcomes: list[EpsOutcome] = []
    robust = clean_correct.clone()
    ids = torch.arange(len(y)) if sample_ids is None else sample_ids.cpu()
    common = {"threat": threat, "target": target, "batch_size": batch_size,
              "keep_examples": keep_examples, "on_batch": on_batch,
              "reference": reference_model, "sample_ids": ids}

    def still_robust() -> torch.Tensor:
        return (robust if attackable is None else robust & attackable).nonzero().flatten()

    if kind == "minimal":  # one run; the curve follows from the per-sample norms
        start = time.perf_counter()
        if start_robust is not None:  # robust at the smallest eps: every one still in play
            robust &= start_robust[min(eps_list)]
        run = _attack_indices(attack, counting, model, x, y, still_robust(), eps=None,
                              stream=streams.sample_seed(seed, "minimal"), **common)
        seconds = time.perf_counter() - start
        for i, eps in enumerate(eps_list):
            fooled = run.fooled & (run.norms <= eps + EPS_TOLERANCE * max(1.0, eps))
            first, last = i == 0, i == len(eps_list) - 1
            before = clean_correct if start_robust is None else clean_correct & start_robust[eps]
            outcomes.append(EpsOutcome(
                eps=eps, robust=before & ~fooled, n_invalid=run.invalid,
                grad_evals=counting.grad_evals if first else 0,
                queries=counting.queries if first else 0,
                seconds=seconds if first else 0.0, reasons=run.reasons,
                adversarial={j: a for j, a in run.examples.items() if run.norms[j] <= eps}
                if last else {},
                n_verify_mismatch=int(run.verify_mismatch.sum()) if first else 0,
                n_precision_mismatch=int((run.precision_mismatch & before & fooled).sum()),
            ))
        return outcomes

    # samples this attack counts as fooled whose example the reference model did not confirm
    # (kept across eps: a sample fooled at a smaller eps stays fooled at the larger ones)
    unconfirmed = torch.zeros_like(clean_correct)
    for eps in eps_list:
        counting.reset()
        start = time.perf_counter()
        if not nested:
            robust = clean_correct.clone()
            unconfirmed = torch.zeros_like(clean_correct)
        if start_robust is not None:
            robust &= start_robust[eps]
        run = _attack_indices(attack, counting, model, x, y, still_robust(), eps=eps,
                              stream=streams.sample_seed(seed, "eps", float(eps)), **common)
        robust &= ~run.fooled
        unconfirmed |= run.precision_mismatch
        outcomes.append(EpsOutcome(
            eps=eps, robust=robust.clone(), n_invalid=run.invalid,
            grad_evals=counting.grad_evals, queries=counting.queries,
            seconds=time.perf_counter() - start, reasons=run.reasons,
            adversarial=run.examples,
            n_verify_mismatch=int(run.verify_mismatch.sum()),
            n_precision_mismatch=int((unconfirmed & ~robust).sum()),
        ))
    return outcomes


# --------------------------------------------------------------------------- diagnostics


def model_diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      num_classes: int, batch_size: int = 256) -> dict[str, Any]:
    """Checks from AutoAttack and the Athalye/Carlini checklist that need the model itself."""
    sample = x[: min(len(x), batch_size)]
    labels = y[: len(sample)]
    with torch.no_grad():
        first = model(sample)
        second = model(sample)
    diag: dict[str, Any] = {}
    diag["nondeterministic"] = bool(not torch.allclose(first, second, atol=1e-5, rtol=1e-4))
    probs_like = bool(((first >= 0) & (first <= 1)).all()
                      and torch.allclose(first.sum(1), torch.ones(len(first)), atol=1e-3))
    diag["outputs-look-like-probabilities"] = probs_like
    xg = sample.clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(xg), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xg)
    zero = (grad.flatten(1).abs().amax(1) == 0)
    diag["zero-gradient-fraction"] = float(zero.float().mean())
    return diag
