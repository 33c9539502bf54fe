"""The study plan: every model condition the workflow generates and judges,
checkpoints included, derived from the validated config and the base model's
depth.

Each condition is a typed object from emlab.interventions (its kind builds its
condition id, its JSON spec, its application and its names); this module only
decides which conditions the config asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from emlab.core.config import resolve_layer
from emlab.core.errors import EMLabError
from emlab.plan.conditions import (
    AdapterProjection,
    AdapterSteering,
    Checkpoint,
    Condition,
    Group,
    LayerwiseAblation,
    MonitorLabel,
    RandomAblation,
    ScalarPatching,
    SingleAblation,
    Steer,
    Transfer,
    Unmodified,
    as_condition,
    parse_condition_id,
)
from emlab.plan.monitor import (
    ANALYSIS_ROLES,
    label_conditions,
    label_generation,
    monitor_runs,
    runs_by_role,
    trait_judge_metrics,
)


class _Plan:
    """Conditions by id, in plan order; an id given twice must name the same condition."""

    def __init__(self):
        self.conditions: dict[str, Condition] = {}

    def add(self, condition: Condition, keep_first: bool = False) -> None:
        cid = condition.condition_id
        old = self.conditions.get(cid)
        if old is not None and old != condition:
            if keep_first:
                return
            raise EMLabError(
                f"two conditions share the id {cid!r}: {old} and {condition}; "
                "make the config values that name them differ (e.g. steering.scales)"
            )
        self.conditions[cid] = condition

    def checked(self) -> dict[str, Condition]:
        for cid, condition in self.conditions.items():
            parsed = parse_condition_id(cid)
            if type(parsed) is not type(condition) or parsed.condition_id != cid:
                raise EMLabError(
                    f"condition id {cid!r} ({type(condition).__name__}) reads back as a "
                    f"{type(parsed).__name__}; rename fine-tune '{condition.model}'"
                )
        return self.conditions


def condition_plan(
    cfg: dict, n_layers: int, model: str | None = None, stress_arm: bool = False
) -> dict[str, Condition]:
    """condition id -> Condition, for every condition of the study, in plan order
    (models, checkpoints, steering, ablation, transfer, single-adapter). In a study of several base
    models `cfg` is one model's view (emlab.plan.models.model_view) and `model` its key, which the
    monitor's label conditions carry (`stress_arm`: the model is the monitor's stress arm)."""
    plan = _Plan()
    condition: Condition
    plan.add(Unmodified("base"))
    for ft in cfg["finetunes"]:
        plan.add(Unmodified(ft))
    for condition in checkpoint_conditions(cfg).values():  # phase.eval_steps: <finetune>__step<N>
        plan.add(condition)
    for condition in label_conditions(
        cfg, model, stress_arm
    ):  # monitor grid: mon__base, <run>__step<N>, group "monitor"
        plan.add(condition)
    st = cfg["steering"]
    semantic_layers = st.get("semantic_layers")
    for vec in st["vectors"]:
        for split in st.get("splits", ["general"]):
            use_semantic = split != "general" and semantic_layers is not None
            key = "steering.semantic_layers" if use_semantic else "steering.layers"
            for lspec in semantic_layers if use_semantic else st["layers"]:
                layer = resolve_layer(lspec, n_layers, key)
                for scale in st["scales"]:
                    plan.add(Steer(vector=vec, layer=layer, scale=float(scale), split=split))
    ab = cfg["ablation"]
    # resolved only where it is used (a model of another depth may have no ablation targets)
    used = ab["targets"] or ab["transfer"]
    single = resolve_layer(ab["single_layer"], n_layers, "ablation.single_layer") if used else 0
    for target in ab["targets"]:
        plan.add(LayerwiseAblation(model=target, vector=target))
        plan.add(SingleAblation(model=target, vector=target, layer=single))
        for seed in ab["random_seeds"]:
            plan.add(RandomAblation(model=target, vector=target, layer=single, seed=int(seed)))
    for t in ab["transfer"]:
        plan.add(Transfer(model=t["target"], vector=t["vector"], layer=single))
        for seed in ab["random_seeds"]:
            # the transfer target's random control; its own, if it is an ablation target too, comes first
            plan.add(
                RandomAblation(model=t["target"], vector=t["vector"], layer=single, seed=int(seed)), keep_first=True
            )
    for ft in cfg.get("single_adapter", {}).get("finetunes", []):
        # for its own v_l and for the reference vector (single_adapter.reference_vector):
        for compared in single_adapter_vectors(cfg, ft, n_layers):
            # (b) the vector ablated from every layer of that model
            plan.add(compared.ablation)
            # (c) the vector projected out of the adapter's B vector itself (weights, renormalised)
            plan.add(compared.projection)
    for condition in adapter_steering_conditions(cfg, n_layers):
        plan.add(condition)
    for condition in scalar_patching_conditions(cfg):
        plan.add(condition)
    return plan.checked()


def scalar_patching_conditions(cfg: dict) -> list[ScalarPatching]:
    """patch__<ft>__<pair> for every lora_interp fine-tune and lora_interp.patching pair type."""
    li = cfg.get("lora_interp") or {}
    patching = li.get("patching") or {}
    pairs = patching.get("pairs", [])
    if not pairs or not li.get("finetunes"):
        return []
    if "same" not in pairs:
        raise EMLabError(
            f"lora_interp.patching.pairs {pairs} lacks same: the same-prompt control is the unpatched reference "
            "of every other pair type; add it (or set pairs to [])"
        )
    return [ScalarPatching(ft, pair, patching["align"]) for ft in li["finetunes"] for pair in pairs]


def generation_settings(cfg: dict, condition) -> dict:
    """The generation settings of one condition: the monitor's label conditions take their own, cheaper
    settings (emlab.plan.monitor.label_generation); scalar patching may set its own samples per question."""
    condition = as_condition(condition)
    if condition.group is Group.MONITOR:
        return label_generation(cfg)
    if isinstance(condition, ScalarPatching):
        samples = cfg["lora_interp"]["patching"].get("samples_per_question")
        if samples is not None:
            return dict(cfg["generation"], samples_per_question=samples)
    return cfg["generation"]


def adapter_steering_conditions(cfg: dict, n_layers: int) -> list[AdapterSteering]:
    """adapter_steer__<ft>__<case> for every lora_interp fine-tune and lora_interp.steering case.

    lora_interp.roles.source config: the factors per adapter resolved here from the configured roles
    (emlab.plan.roles.roles_from_config). source rule: the case's factors per role, resolved by its
    generation job from the roles the fine-tune's own probes gave (its roles.json); the ids are the same."""
    from emlab.plan.roles import role_scaling

    li = cfg.get("lora_interp") or {}
    cases = (li.get("steering") or {}).get("cases", [])
    if not cases or not li.get("finetunes"):
        return []
    names = [c["name"] for c in cases]
    if len(set(names)) != len(names):
        raise EMLabError(f"lora_interp.steering.cases: case names repeat ({names}); each must be unique")
    out = []
    if li["roles"]["source"] == "rule":
        lora_interp_finetunes(cfg, n_layers)  # the fine-tunes, and the rule's protocol and filter, checked now
        for ft in li["finetunes"]:
            for case in cases:
                out.append(AdapterSteering(ft, case["name"], others=case["others"], role_factors=case["factors"]))
        return out
    for ft, roles in lora_interp_roles(cfg, n_layers).items():
        for case in cases:
            try:
                scaling = role_scaling(roles, case["factors"], case["others"])
            except EMLabError as exc:
                raise EMLabError(f"lora_interp.steering.cases '{case['name']}' on '{ft}': {exc}") from None
            out.append(AdapterSteering(ft, case["name"], scaling.factors, scaling.others))
    return out


def conditions(cfg: dict, n_layers: int) -> dict[str, dict]:
    """The plan in its params form: condition id -> {"model", "group", "intervention"(, "checkpoint")}."""
    return {cid: c.to_params() for cid, c in condition_plan(cfg, n_layers).items()}


def finetune_seed(cfg: dict, finetune: str) -> int:
    """The training seed of a fine-tune: its own `seed`, else the top-level one."""
    own = cfg["finetunes"][finetune].get("seed")
    return int(cfg["seed"] if own is None else own)


def phase_finetunes(cfg: dict) -> list[str]:
    """LoRA fine-tunes with training.checkpoint_every > 0 (a full fine-tune has no adapter to rotate)."""
    from emlab.core.config import is_full_finetune, training_settings

    return [
        name
        for name, ft in cfg["finetunes"].items()
        if not is_full_finetune(ft) and int(training_settings(cfg, name).get("checkpoint_every") or 0) > 0
    ]


def checkpoint_condition_id(finetune: str, step: int) -> str:
    return Checkpoint(finetune, step).condition_id


def checkpoint_conditions(cfg: dict) -> dict[str, Checkpoint]:
    """The `phase.eval_steps` checkpoints of every phase fine-tune as generated-and-judged conditions."""
    from emlab.core.config import training_settings

    out: dict[str, Checkpoint] = {}
    steps = sorted({int(s) for s in cfg.get("phase", {}).get("eval_steps", [])})
    for ft in phase_finetunes(cfg):
        every = int(training_settings(cfg, ft)["checkpoint_every"])
        bad = [s for s in steps if s % every]
        if bad:
            raise EMLabError(
                f"phase.eval_steps {bad} are not checkpoints of fine-tune '{ft}' "
                f"(training.checkpoint_every is {every}); use multiples of {every}"
            )
        for step in steps:
            condition = Checkpoint(ft, step)
            out[condition.condition_id] = condition
    return out


def em_steps(conditions: dict, finetune: str) -> dict[str, int | str]:
    """Conditions on the EM-vs-step axis of one fine-tune: base = step 0, checkpoints, the fine-tune = 'final'.
    `conditions`: the plan (Conditions or their params form)."""
    out: dict[str, int | str] = {"base": 0}
    for cid, spec in conditions.items():
        condition = as_condition(spec)
        if isinstance(condition, Checkpoint) and condition.model == finetune:
            out[cid] = condition.step
    out[finetune] = "final"
    return out


def single_adapter_layer(cfg: dict, finetune: str, n_layers: int) -> int:
    """The layer of a single-adapter fine-tune's one rank-1 down_proj adapter (an error otherwise)."""
    from emlab.core.config import lora_layers

    lora = cfg["finetunes"][finetune].get("lora") or {}
    where = f"single_adapter.finetunes: '{finetune}'"
    layers = lora_layers(lora, n_layers, f"finetunes.{finetune}.lora.layers")
    if (
        int(lora.get("rank", 1)) != 1
        or list(lora.get("target_modules", ["down_proj"])) != ["down_proj"]
        or len(layers) != 1
    ):
        raise EMLabError(
            f"{where} needs exactly one rank-1 down_proj adapter (lora rank 1, target_modules "
            f"[down_proj], one layer); it has rank {lora.get('rank')}, target_modules "
            f"{lora.get('target_modules')}, layers {layers}"
        )
    return int(layers[0])


@dataclass(frozen=True)
class ComparedVector:
    """A mean-diff vector a single-adapter fine-tune's B is compared with, and the two conditions that use it."""

    role: str  # "own": the fine-tune's own v_l at its adapter's layer; "reference": single_adapter.reference_vector
    finetune: str  # whose mean-diff vectors (its direction file)
    layer: int
    ablation: SingleAblation  # v ablated from every layer of the single-adapter model (a Transfer if another's)
    projection: AdapterProjection  # the vector projected out of its B (weights, renormalised)

    def to_params(self) -> dict:
        return {
            "role": self.role,
            "finetune": self.finetune,
            "layer": self.layer,
            "ablation": self.ablation.condition_id,
            "projection": self.projection.condition_id,
        }


def single_adapter_reference(cfg: dict, adapter_layer: int, n_layers: int) -> tuple[str, int] | None:
    """(fine-tune, layer) of single_adapter.reference_vector, checked at plan time; None when unset.

    The paper compares the single adapter's B with the layer-24 vector of the 9-adapter organism (the vector it
    transfers), not with the single-adapter model's own. A null layer is the adapter's own layer.
    """
    ref = (cfg.get("single_adapter") or {}).get("reference_vector") or {}
    finetune = ref.get("finetune")
    if finetune is None:
        return None
    key = "single_adapter.reference_vector"
    if finetune not in cfg["finetunes"]:
        raise EMLabError(
            f"{key}.finetune names '{finetune}', which is not a fine-tune ({', '.join(cfg['finetunes']) or 'none'})"
        )
    if finetune not in direction_finetunes(cfg):
        raise EMLabError(f"{key}.finetune: '{finetune}' has no mean-diff directions in this study")
    layer = adapter_layer if ref.get("layer") is None else resolve_layer(ref["layer"], n_layers, f"{key}.layer")
    return finetune, layer


def single_adapter_vectors(cfg: dict, finetune: str, n_layers: int) -> list[ComparedVector]:
    """The vectors a single-adapter fine-tune is compared with: its own v_l at its adapter's layer l, then the
    reference vector if one is configured (an error naming the key if it does not exist)."""
    layer = single_adapter_layer(cfg, finetune, n_layers)
    wanted = [("own", finetune, layer)]
    ref = single_adapter_reference(cfg, layer, n_layers)
    if ref is not None:
        wanted.append(("reference", *ref))
    out = []
    for role, source, at in wanted:
        ablation = (
            SingleAblation(model=finetune, vector=source, layer=at)
            if source == finetune
            else Transfer(model=finetune, vector=source, layer=at)
        )
        out.append(ComparedVector(role, source, at, ablation, AdapterProjection(finetune, source, at)))
    return out


def role_reference_layers(cfg: dict, finetune: str) -> list[int] | None:
    """A fine-tune's adapter layers as given for lora_interp.roles.reference_depth (None when its lora spec
    refers to another depth), so role layers are scaled exactly as its adapters were."""
    lora = cfg["finetunes"][finetune].get("lora") or {}
    ref, depth = lora.get("layers_reference_depth"), cfg["lora_interp"]["roles"]["reference_depth"]
    if not (ref and depth and int(ref) == int(depth) and isinstance(lora.get("layers"), list)):
        return None
    return [int(x) for x in lora["layers"] if not isinstance(x, float)]


def lora_interp_finetunes(cfg: dict, n_layers: int) -> dict[str, list[int]]:
    """The adapter layers of every `lora_interp.finetunes` entry, checked at DAG build.

    Each must be a LoRA fine-tune of rank 1 (one scalar per token and adapter), and with
    `lora_interp.roles.source: config` every role layer must land on one of its adapters.
    """
    return {ft: layers for ft, (layers, _) in _lora_interp(cfg, n_layers).items()}


def lora_interp_roles(cfg: dict, n_layers: int) -> dict[str, dict]:
    """{fine-tune: {adapter: {"role", "why"}}} from the configured role layers (roles.source config only)."""
    return {ft: roles for ft, (_, roles) in _lora_interp(cfg, n_layers).items() if roles is not None}


def _lora_interp(cfg: dict, n_layers: int) -> dict[str, tuple[list[int], dict | None]]:
    from emlab.core.config import lora_layers
    from emlab.core.settings import build
    from emlab.plan.roles import RoleSettings, roles_from_config

    out: dict[str, tuple[list[int], dict | None]] = {}
    li = cfg.get("lora_interp", {})
    if li.get("finetunes"):  # the probes' token filters (and roles.filter), before any job runs
        from emlab.plan.token_filters import TokenFilter, check_probe_filters

        role_cfg = li["roles"]
        check_probe_filters(
            [build(TokenFilter, f, f"lora_interp.probes.filters[{i}]") for i, f in enumerate(li["probes"]["filters"])],
            bool(li["capture"]["gradient_importance"]),
            role_cfg["filter"] if role_cfg["source"] == "rule" else None,
        )
        if role_cfg["source"] == "rule" and role_cfg["protocol"] not in li["probes"]["protocols"]:
            raise EMLabError(
                f"lora_interp.roles.protocol is {role_cfg['protocol']!r}, which is not one of "
                f"lora_interp.probes.protocols ({li['probes']['protocols']}); the role rule reads its coefficients"
            )
    for ft in li.get("finetunes", []):
        where = f"lora_interp.finetunes: '{ft}'"
        lora = cfg["finetunes"][ft].get("lora")
        if not lora:
            raise EMLabError(
                f"{where} is a full fine-tune (no adapter); list only fine-tunes with rank-1 LoRA "
                "adapters (e.g. preset r1x9)"
            )
        if int(lora.get("rank", 0)) != 1:
            raise EMLabError(
                f"{where} has rank-{lora.get('rank')} adapters; per-token scalars need rank-1 adapters "
                "only: remove it from lora_interp.finetunes or train it with lora.rank 1 (preset r1x9)"
            )
        layers = lora_layers(lora, n_layers, f"finetunes.{ft}.lora.layers")
        roles = build(RoleSettings, li["roles"], "lora_interp.roles")
        resolved = None
        if roles.source == "config":
            modules = list(lora.get("target_modules", ["down_proj"]))
            names = [f"L{layer}.{m}" for layer in layers for m in modules]
            try:
                resolved = roles_from_config(
                    names, [layer for layer in layers for _ in modules], roles, n_layers, role_reference_layers(cfg, ft)
                )
            except EMLabError as exc:
                raise EMLabError(
                    f"{exc} (fine-tune '{ft}' of lora_interp.finetunes); change lora_interp.roles or "
                    "use roles.source: rule"
                ) from None
        out[ft] = (layers, resolved)
    return out


def semantic_vectors(cfg: dict) -> list[tuple[str, str]]:
    """(fine-tune, split) of every semantic vector the study needs, sorted."""
    sem = cfg.get("semantic_directions", {})
    pairs = {(ft, split) for ft in sem.get("finetunes", []) for split in sem.get("splits", [])}
    st = cfg["steering"]
    pairs |= {(ft, split) for ft in st["vectors"] for split in st.get("splits", ["general"]) if split != "general"}
    return sorted(pairs)


def condition_metrics(cfg: dict, spec, alignment_traits=(), analysed_runs=None) -> list[str]:
    """Judge metrics of one condition: judge.metrics, plus the semantic splits on the fine-tunes that give
    semantic vectors, and the semantic splits and steering.judge_metrics on the steering conditions and on
    the unsteered base model (their baseline); with monitor.analyses.trait_judges, a judge per alignment
    trait (`alignment_traits`, the names in data/traits) on the monitor's label conditions.

    Judging a metric costs as much as any other, so the extra ones go only where a figure or vector uses them.
    `analysed_runs`: the monitor runs the drift-geometry analyses read (the workflow passes its model's; None:
    planned from `cfg`, a one-model config).
    """
    condition = as_condition(spec)
    metrics = list(cfg["judge"]["metrics"])
    extra: list[str] = []
    splits = sorted({split for _, split in semantic_vectors(cfg)})
    if isinstance(condition, Steer):
        extra = list(cfg["steering"].get("judge_metrics", [])) + splits
    elif condition == Unmodified("base"):
        # the unsteered baseline of the steering figures
        extra = list(cfg["steering"].get("judge_metrics", [])) + splits if cfg["steering"]["vectors"] else []
    elif isinstance(condition, Unmodified):
        extra = [split for ft, split in semantic_vectors(cfg) if ft == condition.model]
        if condition.model in cfg.get("lora_interp", {}).get("finetunes", []):
            extra.append("medical")  # the response sets of lora_interp need the medical judge
    elif isinstance(condition, (AdapterSteering, ScalarPatching)):
        extra = ["medical"]  # % medical and % misaligned-and-medical per case (Fig. 7) and per patching pair
    elif isinstance(condition, MonitorLabel):  # trait drift against judged behaviour (paper Fig. 10) ...
        extra = list(trait_judge_metrics(cfg, alignment_traits).values())
        if extra and condition.model != "base":  # ... of the runs the analyses read (not the stress or live runs)
            if analysed_runs is None:
                analysed_runs = runs_by_role(monitor_runs(cfg), *ANALYSIS_ROLES)
            if condition.model not in analysed_runs:
                extra = []
    return metrics + [m for m in dict.fromkeys(extra) if m not in metrics]


def direction_finetunes(cfg: dict) -> list[str]:
    """Fine-tunes whose mean-diff directions are needed (and so their activations)."""
    needed = set(cfg["steering"]["vectors"]) | set(cfg["ablation"]["targets"])
    needed |= {t["vector"] for t in cfg["ablation"]["transfer"]}
    # Cosine comparisons across fine-tunes want every fine-tune's direction.
    needed |= set(cfg["finetunes"])
    return sorted(needed)
