"""What the experiments share: their JSON config (validated when loaded, before any training), the
patient-level splits, every training run (resumable) and the real target volumes.

:mod:`aldm.experiments.table1` (Table 1), :mod:`aldm.experiments.segmentation` (downstream segmentation)
and :mod:`aldm.experiments.demo` build on these.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace

from ..artifacts.cache import PreparedCache
from ..artifacts.run import WEIGHTS, Run
from ..artifacts.split import save_split
from ..conditions import parse_condition
from ..config import PROFILES, get_profile, with_budget, with_condition, with_decoder_regions
from ..data.masks import MaskSource
from ..data.splits import MAX_TEST_PATIENTS, few_shot_split, with_cv_folds
from ..diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from ..diffusion.settings import GenerationSettings
from ..errors import AldmError
from ..evaluators.classifier import TASKS
from ..evaluators.segmentation_protocols import SegmentationSettings
from ..generate import GenerationRequest, GenerationRuntime, generate
from ..models.families import comparison_models, training_stage
from ..train.baselines import train_comparison
from ..train.distillation import DistillRequest, distill_stage
from ..train.requests import FewShot, ProbeSubjects, Runtime, StageRequest
from ..train.stages import fewshot_stage, source_stage, vae_stage, with_probe_every

STEP_KEYS = ("vae", "ldm", "fewshot", "baseline", "baseline_fewshot", "pixel", "pixel_fewshot", "distill")
ABLATIONS = ("zero-shot", "no-pretraining", "no-controlnet", "few-step")
# the ablations trained once per K of "k": their Table 1 model key -> their name in the config's "ablations"
# ("few-step": a distilled student of ALDM's few-shot run, sampled on its own grid, aldm.train.distillation)
PER_K_ABLATIONS = {"aldm-scratch": "no-pretraining", "aldm-nocontrolnet": "no-controlnet",
                   "aldm-student": "few-step"}
STUDENT = "aldm-student"  # the few-step row's model key


class ConfigProblems(AldmError):
    """Every problem found in an experiment config (``problems``, one line each naming its key), said in one
    line: the first alone, or "N problems: (1) ...; (2) ..." (all at once, as nnU-Net reports a dataset's)."""

    def __init__(self, problems: list[str], path: str | None = None):
        self.problems = list(problems)
        said = problems[0] if len(problems) == 1 else \
            f"{len(problems)} problems: " + "; ".join(f"({n}) {p}" for n, p in enumerate(problems, 1))
        super().__init__(f"{path}: {said}" if path else said)


@dataclass
class ExperimentConfig:
    """The JSON config of ``aldm experiment table1``: caches, output folder, profile, K values,
    guidance scales, baselines, test size, sampler, CV folds, classifier and evaluation settings."""
    source_cache: str
    target_cache: str
    out: str
    profile: str = "small"
    condition: str = "mask"  # what ALDM and the baselines are conditioned on (aldm.conditions)
    # ALDM's VAE decoder sees the label map's regions (VAEConfig.decoder_regions); None: on under a regions
    # condition, off under "mask" (the paper's VAE, which a binary mask could not drive)
    vae_decoder_regions: bool | None = None
    k: list = field(default_factory=lambda: [10, 16])
    guidance: list = field(default_factory=lambda: [0.3, 0.5, 1.0, 3.0])
    # comparison models (aldm.models.families): the paper's GANs by default; "pixelddpm" adds the pixel-space
    # diffusion peer (Med-DDPM's manner), sampled with the experiment's sampler at the largest s
    baselines: list = field(default_factory=lambda: ["cgan", "cgan3m", "vaegan"])
    n_test: int = MAX_TEST_PATIENTS
    seed: int = 0
    sampler: str = DEFAULT_SAMPLER
    sampler_steps: int = DEFAULT_STEPS
    folds: int = 5
    repeats: int = 3
    classifier_task: str = "tumour-slice"
    classifier_epochs: int = 6
    classifier_width: int = 16
    inception: str | None = None
    frd_modalities: list | None = None  # file stems (t1, flair, ...); None: every modality of the target cache
    diversity_pairs: int = 100
    figure4_snapshots: int = 3
    probe_every: int = 0  # held-out learning probes of the ALDM stages every N steps (probe.csv; 0: none)
    # ALDM's few-shot stages keep the EMA weights of their best held-out probe (every probe_every steps, on up to
    # 4 pool patients: neither few-shot nor test) instead of the last (TrainConfig.select_by_probe); needs
    # probe_every and a non-empty pool
    select_fewshot: bool = False
    segmenter_steps: int = 300  # the mask-adherence segmenter (0: no mask Dice)
    segmenter_width: int = 8
    mask_swap_pairs: int = 3  # same seed, two held-out masks: where the difference lies (0: skip)
    # optional overrides: vae, ldm, fewshot, baseline, baseline_fewshot (the GANs), pixel, pixel_fewshot (pixel DDPM)
    steps: dict = field(default_factory=dict)
    # compute parity (instead of "steps"): seconds of training for every model, {"source": S, "fewshot": F} and
    # optionally "vae_share" (ALDM's VAE gets that share of S, its LDM the rest; default 0.5); each stage fits
    # its steps to its seconds on this machine (aldm.train.budget)
    budget_s: dict = field(default_factory=dict)
    # rows that test the paper's claims: "zero-shot" (the source LDM on target masks, no few-shot
    # stage), "no-pretraining" (an LDM trained from scratch on the K target patients, same VAE, for the source
    # + few-shot steps or seconds), "no-controlnet" (source LDM + few-shot without the ControlNet: FiLM
    # statistics only, same steps or seconds); the last two at every K of "k"; [] in the demo
    ablations: list = field(default_factory=list)
    segmentation: dict = field(default_factory=dict)  # aldm experiment segmentation (SegmentationSettings)

    def __post_init__(self):
        """Refuse, before any work, what would fail later — every problem at once, in one AldmError: an
        unknown profile, sampler, baseline, classifier task, FRD modality or steps key, K or test sizes that are
        not positive, guidance outside its range, a bad segmentation section (each naming its key)."""
        problems = config_problems(self)
        if problems:
            raise ConfigProblems(problems)

    def decoder_regions(self) -> bool:
        """Whether ALDM's VAE decoder sees the label map's regions: ``vae_decoder_regions``, or by default
        whether the condition is a regions one."""
        return self.condition != "mask" if self.vae_decoder_regions is None else self.vae_decoder_regions

    @classmethod
    def load(cls, path: str) -> ExperimentConfig:
        """The config in ``path``, validated (one AldmError naming the file and the key when missing or invalid)."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise AldmError(f"{path}: experiment config not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AldmError(f"{path}: not a valid experiment config ({exc})") from exc
        if not isinstance(data, dict):
            raise AldmError(f"{path}: not a valid experiment config (not a JSON object)")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        problems = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + \
            ([f"missing key(s) {', '.join(missing)}"] if missing else [])
        if not missing:
            try:
                config = cls(**{k: v for k, v in data.items() if k in names})
            except ConfigProblems as exc:
                problems += exc.problems
            else:
                if not problems:
                    return config
        raise ConfigProblems(problems, path)


BUDGET_KEYS = ("source", "fewshot", "vae_share")


def check_budget(budget) -> None:
    """An AldmError naming the key unless ``budget`` is {} or {"source": s > 0, "fewshot": s > 0[, "vae_share":
    0 < x < 1]}."""
    if not isinstance(budget, dict):
        raise AldmError(f'"budget_s": expected an object {{"source": seconds, "fewshot": seconds}}, got {budget!r}')
    if not budget:
        return
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise AldmError(f'"budget_s": unknown key(s) {unknown}; known: {", ".join(BUDGET_KEYS)}')
    for key in ("source", "fewshot"):
        value = budget.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise AldmError(f'"budget_s": "{key}" must be a number of seconds > 0, got {value!r}')
    share = budget.get("vae_share", 0.5)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise AldmError(f'"budget_s": "vae_share" must be a number between 0 and 1, got {share!r}')


def _positive_ints(key: str, values, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(values, list) or not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
        raise AldmError(f'"{key}": expected a non-empty list of whole numbers >= {low}, got {values!r}')


def _check_models(cfg: ExperimentConfig) -> None:
    if cfg.profile not in PROFILES and not str(cfg.profile).endswith(".json"):
        raise AldmError(f'"profile": unknown profile {cfg.profile!r}; choose one of {", ".join(PROFILES)} '
                        "or a JSON config file")


def _check_condition(cfg: ExperimentConfig) -> None:
    parse_condition(cfg.condition, '"condition"')
    if cfg.vae_decoder_regions is not None and not isinstance(cfg.vae_decoder_regions, bool):
        raise AldmError(f'"vae_decoder_regions": expected true, false or null, got {cfg.vae_decoder_regions!r}')
    if cfg.vae_decoder_regions and cfg.condition == "mask":
        raise AldmError('"vae_decoder_regions": a decoder that draws the sub-regions needs a regions condition '
                        '("condition": "regions" or "regions+brain")')


def _check_guidance(cfg: ExperimentConfig) -> None:
    if not isinstance(cfg.guidance, list) or not cfg.guidance:
        raise AldmError(f'"guidance": expected a non-empty list of guidance scales, got {cfg.guidance!r}')
    for g in cfg.guidance:
        try:
            GenerationSettings(guidance=g)
        except AldmError as exc:
            raise AldmError(f'"guidance": {exc}') from None


def _check_sampler(cfg: ExperimentConfig) -> None:
    try:
        GenerationSettings(sampler=cfg.sampler)
    except AldmError as exc:
        raise AldmError(f'"sampler": {exc}') from None
    try:
        GenerationSettings(sampler=cfg.sampler, steps=cfg.sampler_steps)
    except AldmError as exc:
        raise AldmError(f'"sampler_steps": {exc}') from None


def _check_baselines(cfg: ExperimentConfig) -> None:
    known = comparison_models()
    unknown = [b for b in cfg.baselines if b not in known] if isinstance(cfg.baselines, list) else [0]
    if unknown:
        raise AldmError(f'"baselines": unknown baseline(s) {unknown}; choose from {", ".join(known)}')


def _check_classifier(cfg: ExperimentConfig) -> None:
    if cfg.classifier_task not in TASKS:
        raise AldmError(f'"classifier_task": unknown task {cfg.classifier_task!r}; choose one of {", ".join(TASKS)}')


def _check_frd(cfg: ExperimentConfig) -> None:
    if cfg.frd_modalities is None:
        return
    from ..modalities import KNOWN_MODALITIES, file_stems

    known = file_stems(KNOWN_MODALITIES)
    bad = [m for m in cfg.frd_modalities if m not in known] if isinstance(cfg.frd_modalities, list) else [0]
    if bad:
        raise AldmError(f'"frd_modalities": unknown modality {bad}; choose from {", ".join(known)}')


def _check_steps(cfg: ExperimentConfig) -> None:
    bad = sorted(set(cfg.steps) - set(STEP_KEYS)) if isinstance(cfg.steps, dict) else ["(not an object)"]
    if bad:
        raise AldmError(f'"steps": unknown stage(s) {bad}; known: {", ".join(STEP_KEYS)}')
    _positive_ints("steps", list(cfg.steps.values()) or [1])
    if cfg.budget_s and cfg.steps:
        raise AldmError('"budget_s" and "steps" both set: give the stages seconds or steps, not both')


def _check_ablations(cfg: ExperimentConfig) -> None:
    bad = [a for a in cfg.ablations if a not in ABLATIONS] if isinstance(cfg.ablations, list) else [0]
    if bad:
        raise AldmError(f'"ablations": unknown ablation(s) {bad}; choose from {", ".join(ABLATIONS)}')


def _check_selection(cfg: ExperimentConfig) -> None:
    if cfg.select_fewshot and not cfg.probe_every:
        raise AldmError('"select_fewshot": selecting by the held-out probe needs "probe_every" > 0')


# the counts an experiment config holds, and whether 0 is allowed for each
COUNTS = {"n_test": True, "folds": True, "repeats": False, "classifier_epochs": False, "classifier_width": False,
          "diversity_pairs": True, "figure4_snapshots": True, "probe_every": True, "segmenter_steps": True,
          "segmenter_width": False, "mask_swap_pairs": True}


def config_problems(cfg: ExperimentConfig) -> list[str]:
    """Every problem of an experiment config, one line each naming its key (empty: none)."""
    checks = [_check_models, _check_condition, lambda c: _positive_ints("k", c.k), _check_guidance, _check_sampler,
              _check_baselines, _check_classifier, _check_frd, _check_steps, lambda c: check_budget(c.budget_s),
              _check_ablations, _check_selection,
              lambda c: SegmentationSettings.from_dict(c.segmentation, '"segmentation"')]
    checks += [lambda c, key=key, zero=zero: _positive_ints(key, [getattr(c, key)], allow_zero=zero)
               for key, zero in COUNTS.items()]
    problems = []
    for check in checks:
        try:
            check(cfg)
        except AldmError as exc:
            problems.append(str(exc))
    return problems


def with_budgets(profile, budget: dict):
    """``profile`` with each stage's ``budget_s`` set from an experiment's ``budget_s``: ALDM's VAE and source
    LDM share the source seconds (``vae_share``), each baseline's source stage gets all of them; every
    few-shot stage gets the few-shot seconds. ``budget`` {}: ``profile`` as it is."""
    if not budget:
        return profile
    share, source, fewshot = budget.get("vae_share", 0.5), float(budget["source"]), float(budget["fewshot"])
    seconds = {"train_vae": share * source, "train_ldm": (1 - share) * source, "train_fewshot": fewshot,
               "train_baseline": source, "train_baseline_fewshot": fewshot, "train_pixel": source,
               "train_pixel_fewshot": fewshot}
    for stage, s in seconds.items():
        profile = with_budget(profile, stage, s)
    return profile


def finished(run: str) -> bool:
    """Whether the run in ``run`` has finished training."""
    return Run(run).finished


def started(run: str) -> bool:
    """Whether ``run`` holds a run (finished or not): training it again resumes it."""
    return Run(run).exists


def log(text: str, experiment: str = "table1") -> None:
    """One progress line of ``experiment`` on stderr, with the time."""
    print(f"[{experiment} {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def make_splits(cfg: ExperimentConfig) -> dict:
    """{k: split} with a shared test set and nested few-shot subjects; CV folds over non-shot patients."""
    path = os.path.join(cfg.out, "splits.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            return {int(k): v for k, v in json.load(fh).items()}
    rows = PreparedCache(cfg.target_cache).require().rows("target")
    if not rows:
        raise AldmError(f"{cfg.target_cache}: no target-domain subjects")
    k_max = max(cfg.k)
    patients = len({r["patient"] for r in rows})
    n_test = min(cfg.n_test, patients - k_max)
    if n_test < cfg.folds:
        raise AldmError(f"{cfg.target_cache}: {patients} target patients leave {n_test} for testing after K={k_max}; "
                        f"need at least {cfg.folds}")
    base = with_cv_folds(rows, few_shot_split(rows, k_max, n_test, seed=cfg.seed), cfg.folds, cfg.repeats, cfg.seed)
    splits = {k_max: base}
    shot_rows = [r for r in rows if r["subject"] in set(base["k_shot"])]
    for k in cfg.k:
        if k != k_max:
            sub = few_shot_split(shot_rows, k, 0, seed=cfg.seed)
            splits[k] = {**base, "k_shot": sub["k_shot"], "k": k,
                         "pool": sorted(set(base["pool"]) | (set(base["k_shot"]) - set(sub["k_shot"])))}
    os.makedirs(cfg.out, exist_ok=True)
    save_split(path, {str(k): v for k, v in splits.items()})
    for k, split in splits.items():
        save_split(os.path.join(cfg.out, f"split_k{k}.json"), split)
    return splits


@dataclass
class PlannedRun:
    """One training run of an experiment: its ``name`` (the key :func:`train_all` returns it under), folder,
    the line logged when it starts, the runs it starts from (``needs``: names of earlier ones) and
    ``train(resume)``, which trains it (or continues it, with ``resume``). ``done()``: whether nothing is
    left to do (default: its weights exist)."""

    name: str
    path: str
    title: str
    needs: tuple
    train: Callable[[bool], None]
    done: Callable[[], bool] | None = None

    def finished(self) -> bool:
        """Whether the run needs no more training."""
        return self.done() if self.done is not None else finished(self.path)


def train_all(cfg: ExperimentConfig, splits: dict, progress: bool = True) -> dict:
    """Every training run of the experiment (:func:`plan_runs`), each trained or continued in order once the
    runs it needs are finished; returns {name: run dir} (with ``aldm-zeroshot``, the source LDM itself, when
    that ablation is asked for). Figure-4 snapshots included. Safe to re-run: finished runs are skipped."""
    plan = plan_runs(cfg, splits, progress)
    done = set()
    for run in plan:
        missing = [n for n in run.needs if n not in done]
        if missing:
            raise AldmError(f"{run.path}: planned before the run(s) it starts from ({', '.join(missing)})")
        if not run.finished():
            log(run.title)
            run.train(started(run.path))
        done.add(run.name)
    runs = {run.name: run.path for run in plan}
    if "zero-shot" in cfg.ablations:
        runs["aldm-zeroshot"] = runs["ldm"]
    return runs


def plan_runs(cfg: ExperimentConfig, splits: dict, progress: bool = True) -> list[PlannedRun]:
    """The training runs of an experiment, in the order they train: ALDM's VAE, source LDM and few-shot LDM
    per K, the ablations asked for (per K), and each comparison model's source then few-shot run."""
    profile = with_budgets(with_condition(get_profile(cfg.profile), cfg.condition), cfg.budget_s)
    probe = None
    if cfg.probe_every:
        profile = with_probe_every(profile, cfg.probe_every)
        probe = ProbeSubjects(cfg.target_cache, splits[max(cfg.k)]["test"][:2])  # held out from every stage
    # the few-shot stages: probed (and, with select_fewshot, selected) on pool patients, never on test ones
    fewshot_profile, fewshot_probe = fewshot_selection(cfg, splits, profile, probe)
    setting = _RunSetting(cfg, splits, profile, fewshot_profile, probe, fewshot_probe, progress)
    plan = _aldm_runs(setting)
    if "no-pretraining" in cfg.ablations:
        plan += _scratch_runs(setting)
    if "no-controlnet" in cfg.ablations:
        plan += _no_controlnet_runs(setting)
    if "few-step" in cfg.ablations:
        plan += _student_runs(setting)
    for b in cfg.baselines:
        plan += _comparison_runs(setting, b)
    return plan


@dataclass
class _RunSetting:
    """What every planned run of an experiment is built from."""

    cfg: ExperimentConfig
    splits: dict
    profile: object
    fewshot_profile: object
    probe: ProbeSubjects | None
    fewshot_probe: ProbeSubjects | None
    progress: bool

    def path(self, name: str) -> str:
        """The folder of run ``name`` below the experiment's runs/."""
        return os.path.join(self.cfg.out, "runs", name)

    def split(self, k: int) -> str:
        """The saved split of K."""
        return os.path.join(self.cfg.out, f"split_k{k}.json")

    def steps(self, key: str):
        """The experiment's "steps" override of a stage (None: the profile's)."""
        return (self.cfg.steps or {}).get(key)

    def request(self, cache: str, run: str, profile, resume: bool, steps=None, fewshot: FewShot | None = None,
                probe: ProbeSubjects | None = None) -> StageRequest:
        """The training request of one run of the experiment (its seed, progress and condition)."""
        return StageRequest(cache, run, profile, fewshot, steps, self.cfg.seed, None, None,
                            Runtime(resume, None, self.progress), probe)


def _aldm_runs(st: _RunSetting) -> list[PlannedRun]:
    cfg, profile = st.cfg, st.profile
    vae, ldm = st.path("vae"), st.path("ldm")
    plan = [
        PlannedRun("vae", vae, "stage 1: VAE", (), lambda resume: vae_stage(st.request(
            cfg.source_cache, vae, with_decoder_regions(profile, cfg.decoder_regions()), resume, st.steps("vae"),
            probe=st.probe))),
        PlannedRun("ldm", ldm, "stages 2-3: source LDM", ("vae",), lambda resume: source_stage(st.request(
            cfg.source_cache, ldm, profile, resume, st.steps("ldm"), probe=st.probe), vae)),
    ]
    for k in sorted(cfg.k):
        plan.append(_fewshot_run(st, k))
    return plan


def _fewshot_run(st: _RunSetting, k: int) -> PlannedRun:
    """ALDM's few-shot run of K; at the largest K trained in ``figure4_snapshots`` chunks, one sample of a test
    patient after each (Figure 4; LDM losses do not depend on the total length, so chunked training equals one
    run). Under a budget the length is known once the stage has fitted it: one snapshot, at the end."""
    cfg = st.cfg
    run, total, largest = st.path(f"aldm_k{k}"), st.steps("fewshot") or st.profile.train_fewshot.steps, k == max(cfg.k)

    def snapshot(step: int) -> str:
        return os.path.join(cfg.out, "figure4", f"k{k}_step{step}")

    def done() -> bool:
        length = Run(run).profile.train_fewshot.steps if cfg.budget_s and finished(run) else total
        return finished(run) and (not largest or os.path.exists(snapshot(length)))

    def train(resume: bool) -> None:
        chunks = max(1, cfg.figure4_snapshots) if largest and not cfg.budget_s else 1
        for i in range(1, chunks + 1):
            target = None if cfg.budget_s else max(1, round(total * i / chunks))
            if target is not None and os.path.exists(snapshot(target)):
                continue
            fewshot_stage(st.request(cfg.target_cache, run, st.fewshot_profile, started(run), target,
                                     FewShot(st.path("ldm"), st.split(k)), st.fewshot_probe))
            snap = snapshot(target if target is not None else Run(run).profile.train_fewshot.steps)
            if largest:
                first_test = st.splits[k]["test"][:1]
                generate(GenerationRequest(run, snap, 1, MaskSource("cache", cfg.target_cache), first_test,
                                           generation_settings(cfg, max(cfg.guidance), cfg.seed), native=False,
                                           runtime=GenerationRuntime(progress=False)))
            if Run(run).finished and i < chunks:
                os.remove(Run(run).file(WEIGHTS))  # not finished yet: the next chunk continues

    return PlannedRun(f"aldm_k{k}", run, f"stage 4: few-shot LDM, K={k}", ("ldm",), train, done)


def _scratch_runs(st: _RunSetting) -> list[PlannedRun]:
    """The no-pre-training ablation per K: trained as the source LDM is (its optimiser settings), for the
    source + few-shot length, from random weights on the K target patients (the source run gives its VAE)."""
    cfg, profile = st.cfg, st.profile
    ldm, few = profile.train_ldm, profile.train_fewshot
    length = replace(ldm, steps=(st.steps("ldm") or ldm.steps) + (st.steps("fewshot") or few.steps),
                     budget_s=ldm.budget_s + few.budget_s,
                     select_by_probe=st.fewshot_profile.train_fewshot.select_by_probe)
    plan = []
    for k in sorted(cfg.k, reverse=True):
        scratch = st.path(f"aldm_scratch_k{k}")
        plan.append(PlannedRun(
            f"aldm-scratch_k{k}", scratch, f"ablation: LDM from scratch on the K={k} target patients", ("ldm",),
            lambda resume, scratch=scratch, k=k: fewshot_stage(st.request(
                cfg.target_cache, scratch, replace(profile, train_fewshot=length), resume,
                fewshot=FewShot(st.path("ldm"), st.split(k), from_scratch=True), probe=st.fewshot_probe))))
    return plan


def _no_controlnet_runs(st: _RunSetting) -> list[PlannedRun]:
    """The no-ControlNet ablation: a source LDM and its few-shot runs per K without the ControlNet."""
    cfg = st.cfg
    plain = replace(st.profile, unet=replace(st.profile.unet, controlnet=False))
    src = st.path("ldm_nocontrolnet")
    plan = [PlannedRun("ldm-nocontrolnet", src, "ablation: source LDM without the ControlNet", ("vae",),
                       lambda resume: source_stage(st.request(cfg.source_cache, src, plain, resume, st.steps("ldm"),
                                                              probe=st.probe), st.path("vae")))]
    for k in sorted(cfg.k, reverse=True):
        few = st.path(f"aldm_nocontrolnet_k{k}")
        plan.append(PlannedRun(
            f"aldm-nocontrolnet_k{k}", few, f"ablation: few-shot LDM without the ControlNet, K={k}",
            ("ldm-nocontrolnet",), lambda resume, few=few, k=k: fewshot_stage(st.request(
                cfg.target_cache, few, replace(plain, train_fewshot=st.fewshot_profile.train_fewshot), resume,
                st.steps("fewshot"), FewShot(src, st.split(k)), st.fewshot_probe))))
    return plan


def _student_runs(st: _RunSetting) -> list[PlannedRun]:
    """The few-step row per K: a student of ALDM's few-shot run (``aldm train distill`` with the profile's
    distillation settings), trained on that run's K patients."""
    plan = []
    for k in sorted(st.cfg.k, reverse=True):
        student = st.path(f"aldm_student_k{k}")
        plan.append(PlannedRun(
            f"{STUDENT}_k{k}", student, f"few-step student of the few-shot LDM, K={k}", (f"aldm_k{k}",),
            lambda resume, student=student, k=k: distill_stage(DistillRequest(
                st.path(f"aldm_k{k}"), student, steps=st.steps("distill"), seed=st.cfg.seed,
                runtime=Runtime(resume, None, st.progress)))))
    return plan


def _comparison_runs(st: _RunSetting, model: str) -> list[PlannedRun]:
    """A comparison model's source run and its few-shot run at the largest K (the latter under the model's
    name, as Table 1 rows look it up)."""
    cfg, k_max = st.cfg, max(st.cfg.k)
    src, few = st.path(model), st.path(f"{model}_k{k_max}")
    key = training_stage(model, False).removeprefix("train_")  # "baseline" (a GAN) or "pixel"
    return [
        PlannedRun(f"{model}-source", src, f"baseline {model}: source training", (),
                   lambda resume: train_comparison(model, st.request(cfg.source_cache, src, st.profile, resume,
                                                                     st.steps(key)))),
        PlannedRun(model, few, f"baseline {model}: few-shot K={k_max}", (f"{model}-source",),
                   lambda resume: train_comparison(model, st.request(
                       cfg.target_cache, few, st.profile, resume, st.steps(f"{key}_fewshot"),
                       FewShot(src, st.split(k_max))))),
    ]


def run_key(cell: dict) -> str:
    """The key in :func:`train_all`'s runs of the model a Table 1 cell samples: ``aldm_k<K>`` for ALDM,
    ``<ablation>_k<K>`` for the no-pre-training and no-ControlNet rows (one run per K), the model's name
    otherwise (a baseline at K = max(K); the zero-shot row's source LDM)."""
    if cell["model"] == "aldm":
        return f"aldm_k{cell['k']}"
    if cell["model"] in PER_K_ABLATIONS:
        return f"{cell['model']}_k{cell['k']}"
    return cell["model"]


def fewshot_selection(cfg: ExperimentConfig, splits: dict, profile, probe: ProbeSubjects | None):
    """(profile, probe) of ALDM's few-shot stages: as the other stages' unless ``select_fewshot``, which probes
    up to 4 pool patients of the K = max(K) split (held out from training and from testing; an AldmError when
    there are none) and keeps each stage's best probed weights (``train_fewshot.select_by_probe``)."""
    if not cfg.select_fewshot:
        return profile, probe
    pool = splits[max(cfg.k)]["pool"]
    if not pool:
        raise AldmError(f'"select_fewshot": {cfg.target_cache} leaves no pool patient (neither few-shot nor test) '
                        f"to select on; lower \"n_test\" or K")
    selecting = replace(profile, train_fewshot=replace(profile.train_fewshot, select_by_probe=True))
    return selecting, ProbeSubjects(cfg.target_cache, pool[:4])


def generation_settings(cfg: ExperimentConfig, guidance: float | None, seed: int,
                        model: str | None = None) -> GenerationSettings:
    """The experiment's sampler and steps at ``guidance`` (None: a baseline's cell, where it does not apply)
    from ``seed``; the few-step row's ``model`` (the student) samples on its own grid in its own steps."""
    own = model == STUDENT
    return GenerationSettings(sampler=None if own else cfg.sampler, steps=None if own else cfg.sampler_steps,
                              seed=seed, **({} if guidance is None else {"guidance": guidance}))


def real_items(cache: str, subjects: list) -> list[dict]:
    """Cached target volumes of ``subjects``: dicts with subject, image (C, S, S, S), mask, labels (the BraTS
    label map) and brain (each (1, S, S, S)), idh and grade."""
    prepared = PreparedCache(cache)
    rows = prepared.by_subject()
    items = []
    for s in subjects:
        data = prepared.load(rows[s])
        items.append({"subject": s, "image": data["image"], "mask": data["mask"], "labels": data["labels"],
                      "brain": data["brain"], "idh": rows[s]["idh"] or None,
                      "grade": rows[s]["grade"] or None})
    return items


