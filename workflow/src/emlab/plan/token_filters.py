"""The probes' token filters (config lora_interp.probes.filters), checked when the workflow is planned:
which answer tokens a probe uses, by none or one significance score (emlab.lora.probes applies them)."""

from __future__ import annotations

from dataclasses import dataclass

from emlab.core.errors import EMLabError

SIGNIFICANCE_COLUMNS = ("kl", "grad_importance")


@dataclass(frozen=True)
class TokenFilter:
    """Which answer tokens a probe uses: all (column None), or those significant by `column`."""

    name: str  # label in the outputs ("all", "kl_top20", "grad_log0.5", ...)
    column: str | None  # kl | grad_importance | None (every answer token)
    above: float | None  # keep tokens with column > above ...
    top_fraction: float | None  # ... or the top fraction of the fine-tune's answer tokens by column ...
    log_above: float | None  # ... or those with ln(column) > log_above (the paper: grad_importance, 0.5)


FILTER_CUTS = ("above", "top_fraction", "log_above")


def check_token_filter(flt: TokenFilter, gradient_importance: bool | None = None) -> None:
    """Raise EMLabError naming the key when a filter is malformed; `gradient_importance` (the capture setting,
    when known) must be on for a grad_importance filter. Runs at plan time and again before filtering."""
    where = f"lora_interp.probes.filters[{flt.name}]"
    cuts = [k for k in FILTER_CUTS if getattr(flt, k) is not None]
    if flt.column is None:
        if cuts:
            raise EMLabError(f"{where}: `{cuts[0]}` needs a `column` (kl or grad_importance)")
        return
    if flt.column not in SIGNIFICANCE_COLUMNS:
        raise EMLabError(f"{where}: column must be one of {SIGNIFICANCE_COLUMNS} or null, got {flt.column!r}")
    if len(cuts) != 1:
        raise EMLabError(f"{where}: give exactly one of `above`, `top_fraction` or `log_above` (got {cuts or 'none'})")
    if flt.top_fraction is not None and not 0 < flt.top_fraction <= 1:
        raise EMLabError(f"{where}: top_fraction must be in (0, 1], got {flt.top_fraction}")
    if flt.column == "grad_importance" and gradient_importance is False:
        raise EMLabError(
            f"{where}: filters on grad_importance, but lora_interp.capture.gradient_importance is false "
            "(the scores would all be missing); turn it on or filter on kl"
        )


def check_probe_filters(filters: list[TokenFilter], gradient_importance: bool, role_filter: str | None) -> None:
    """Plan-time check of lora_interp.probes.filters: each filter well formed (check_token_filter), names
    unique, and `role_filter` (lora_interp.roles.filter, when roles come from the coefficients) one of them."""
    if not filters:
        raise EMLabError("lora_interp.probes.filters must list at least one filter (name: all, column: null)")
    for flt in filters:
        check_token_filter(flt, gradient_importance)
    names = [f.name for f in filters]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EMLabError(f"lora_interp.probes.filters: names must be unique, {repeated} repeat")
    if role_filter is not None and role_filter not in names:
        raise EMLabError(
            f"lora_interp.roles.filter is {role_filter!r}, which is no lora_interp.probes.filters name ({names})"
        )
