"""Mix Loss: L = sum over domains of (CE_d + lambda * DC_d) (docs/method.md, "Mix Loss")."""

from __future__ import annotations

from torch import Tensor

__all__ = ["mix_loss"]


def mix_loss(
    per_domain: dict[str, dict[str, Tensor]], *, dc_weight: float
) -> tuple[Tensor, dict[str, float]]:
    """Total = sum_d (ce_d + dc_weight * dc_d); parts name every term ("ce/<d>", "dc/<d>", "loss") as floats.

    per_domain: {domain: {"ce": Tensor, "dc": Tensor (optional)}}. A missing "dc" counts as no DC term.
    """
    if not per_domain:
        raise ValueError("mix_loss needs at least one domain in per_domain, got an empty dict")
    total: Tensor | None = None
    parts: dict[str, float] = {}
    for domain, terms in per_domain.items():
        unknown = set(terms) - {"ce", "dc"}
        if "ce" not in terms or unknown:
            raise ValueError(
                f"per_domain[{domain!r}] must hold 'ce' (and optionally 'dc'), got keys {sorted(terms)}"
            )
        term = terms["ce"]
        parts[f"ce/{domain}"] = float(terms["ce"].detach().item())
        if "dc" in terms:
            parts[f"dc/{domain}"] = float(terms["dc"].detach().item())
            if dc_weight != 0:
                term = term + dc_weight * terms["dc"]
        total = term if total is None else total + term
    parts["loss"] = float(total.detach().item())
    return total, parts
