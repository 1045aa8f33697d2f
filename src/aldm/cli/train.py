"""``aldm train``: the VAE (stage 1), source pre-training of the latent model (stages 2-3), few-shot
adaptation (stage 4) and the comparison models; ``train ldm`` is the older name of stages 3 and 4, which
chooses between them by ``--vae`` / ``--init`` and says which it chose."""

from __future__ import annotations

import os
from dataclasses import replace

from ..conditions import CONDITIONS
from ..config import DISTILL_METHODS, PRECISIONS
from ..errors import AldmError
from ..models.families import comparison_models, training_stage
from .arguments import non_negative_int, positive_float, positive_int

# what a --profile given with --resume must agree on with the run's own config.json (the rest: the
# run's settings, --steps / --seed / --precision overrides and probes, may differ)
PROFILE_IDENTITY = ("name", "image_size", "condition", "vae", "unet", "diffusion", "baseline", "pixel")


def _probe_subjects(args):
    """The held-out probe of ``aldm train --probe-every``: --probe-subjects of --probe-data (default
    --data), or of the few-shot split (--split, or the run's own when resuming) 2 test subjects — or, with
    --select-by-probe, up to 4 pool subjects (weights chosen on test patients would be tuned to the test)."""
    from ..artifacts.run import Run
    from ..artifacts.split import load_split
    from ..train.requests import ProbeSubjects

    if not args.probe_every:
        return None
    subjects = args.probe_subjects
    if subjects is None:
        split_path = getattr(args, "split", None) or (Run(args.out).split_path if args.resume else None)
        if not split_path or not os.path.exists(split_path):
            raise AldmError("--probe-every needs --probe-subjects (held-out subjects), or a few-shot --split")
        split = load_split(split_path)
        subjects = split["pool"][:4] if getattr(args, "select_by_probe", False) else split["test"][:2]
        if not subjects:
            raise AldmError(f"{split_path}: no pool subject (neither few-shot nor test) to select on; give "
                            "--probe-subjects")
    return ProbeSubjects(args.probe_data or args.data, list(subjects))


def _resumed_profile(args):
    """With ``--resume`` on an existing run: the run's own profile (its ``config.json``; damaged: one line),
    refusing a ``--profile`` that contradicts it; else None."""
    from ..artifacts.run import Run
    from ..config import PROFILE_COMMON, get_profile, with_condition

    run = Run(args.out)
    if not (args.resume and run.exists):
        return None
    own = run.profile
    condition = getattr(args, "condition", None)
    if condition is not None and condition != own.condition:
        raise AldmError(f"{run.file('config.json')}: the run is conditioned on {own.condition!r}, not {condition!r}; "
                        "resume without --condition or choose another --out")
    if args.profile:
        given = with_condition(get_profile(args.profile), own.condition)
        held = set(run.profile_parts())  # a run's config.json holds its own family's parts only
        differs = [k for k in PROFILE_IDENTITY
                   if (k in held or k in PROFILE_COMMON) and given.to_dict()[k] != own.to_dict()[k]]
        if differs:
            raise AldmError(f"{run.file('config.json')}: the run was started with profile {own.name!r}; --profile "
                            f"{args.profile} differs in {', '.join(differs)}; resume without --profile (the run's "
                            "own is used) or choose another --out")
    return own


def _with_budget(profile, stage: str, seconds: float | None):
    """``profile`` with ``--budget-s`` on the stage it trains (None: no profile yet, the parent's is taken)."""
    from ..config import with_budget

    return profile if profile is None else with_budget(profile, stage, seconds)


def _parent_or_named_profile(args, resumed, parent: str | None, default: str | None):
    """The profile a stage trains with: the resumed run's, ``--profile``, the parent run's, or ``default``."""
    from ..artifacts.run import Run
    from ..config import get_profile

    if resumed:
        return resumed
    if args.profile:
        return get_profile(args.profile)
    if parent:
        return Run(parent).profile
    return get_profile(default) if default else None


def _request(args, info, profile, fewshot=None, probe=None):
    """The :class:`~aldm.train.requests.StageRequest` of a ``train`` command's options."""
    from ..train.requests import Runtime, StageRequest

    return StageRequest(args.data, args.out, profile, fewshot, args.steps, args.seed, args.precision,
                        getattr(args, "condition", None), Runtime(args.resume, info, not args.quiet), probe)


def _fewshot_of(args):
    """The few-shot part of a request (--init with --k / --n-test / --split, --from-scratch), or None."""
    from ..train.requests import FewShot

    if not getattr(args, "init", None):
        return None
    return FewShot(args.init, args.split, args.k, args.n_test, getattr(args, "from_scratch", False))


def _train_vae(args, info, resumed):
    from ..config import with_decoder_regions
    from ..train.stages import vae_stage, with_probe_every

    profile = resumed or _parent_or_named_profile(args, None, None, "small")
    if args.decoder_regions and not profile.vae.decoder_regions:
        if resumed:
            raise AldmError(f"{args.out}: the run's VAE was started without --decoder-regions; resume "
                            "without it or choose another --out")
        profile = with_decoder_regions(profile)
    profile = with_probe_every(_with_budget(profile, "train_vae", args.budget_s), args.probe_every)
    return vae_stage(_request(args, info, profile, probe=_probe_subjects(args)))


def _train_latent(args, info, resumed):
    """Stage 3 (``args.vae``) or stage 4 (``args.init``) of the latent model."""
    from ..config import with_inpaint_context
    from ..train.stages import check_latent_parent, fewshot_stage, source_stage, with_probe_every

    init, vae = getattr(args, "init", None), getattr(args, "vae", None)
    check_latent_parent(vae, init, getattr(args, "from_scratch", False))
    stage = "train_fewshot" if init else "train_ldm"
    profile = _parent_or_named_profile(args, resumed, init or vae, None)
    profile = with_probe_every(_with_budget(profile, stage, args.budget_s), args.probe_every)
    if args.inpaint and not profile.unet.inpaint_context:
        if resumed:
            raise AldmError(f"{args.out}: the run was started without --inpaint; resume without it or choose "
                            "another --out")
        profile = with_inpaint_context(profile)
    if args.select_by_probe:
        if not args.probe_every:
            raise AldmError("--select-by-probe needs --probe-every N (the held-out probe it selects by)")
        profile = replace(profile, **{stage: replace(getattr(profile, stage), select_by_probe=True)})
    request = _request(args, info, profile, _fewshot_of(args), _probe_subjects(args))
    return fewshot_stage(request) if init else source_stage(request, vae)


def _train_ldm_alias(args, info, resumed):
    """``aldm train ldm``: stage 3 with ``--vae``, stage 4 with ``--init``; says which (one line on stdout)."""
    if bool(args.vae) != bool(args.init):
        chosen = "source pre-training, as 'aldm train source'" if args.vae else \
            "few-shot adaptation, as 'aldm train fewshot'"
        if info.is_main:
            print(f"aldm train ldm: --{'vae' if args.vae else 'init'} given: {chosen}")
    return _train_latent(args, info, resumed)


def _train_baseline(args, info, resumed):
    from ..train.baselines import train_comparison

    profile = _parent_or_named_profile(args, resumed, args.init, "small")
    profile = _with_budget(profile, training_stage(args.model, bool(args.init)), args.budget_s)
    return train_comparison(args.model, _request(args, info, profile, _fewshot_of(args)))


def _train_distill(args, info, resumed):
    """A few-step student of --teacher (:mod:`aldm.train.distillation`)."""
    from ..config import get_profile
    from ..train.distillation import DistillRequest, distill_stage
    from ..train.requests import Runtime

    profile = resumed or (get_profile(args.profile) if args.profile else None)
    return distill_stage(DistillRequest(
        args.teacher, args.out, steps_to=args.steps_to, teacher_steps=args.teacher_steps,
        guidance_range=args.guidance_range, method=args.method, steps=args.steps, budget_s=args.budget_s,
        seed=args.seed, precision=args.precision, profile=profile, cache=args.data,
        runtime=Runtime(args.resume, info, not args.quiet)))


TRAINERS = {"vae": _train_vae, "source": _train_latent, "fewshot": _train_latent, "ldm": _train_ldm_alias,
            "baseline": _train_baseline, "distill": _train_distill}


def _cmd_train(args) -> int:
    from ..distributed import init_distributed, shutdown

    resumed = _resumed_profile(args)
    if args.steps and args.budget_s:
        raise AldmError("give --steps or --budget-s, not both")
    info = init_distributed()
    try:
        last = TRAINERS[args.stage](args, info, resumed)
    finally:
        shutdown(info)
    if info.is_main:
        if "phases" in last:
            print(f"{args.stage}: phases {', '.join(last['phases'])} trained")
        elif last["loss"] != last["loss"]:  # NaN: resumed at its last step, nothing left to train
            print(f"{args.stage}: all {last['step']} steps were done; weights written")
        else:
            print(f"{args.stage}: {last['step']} steps, final loss {last['loss']:.4f}, "
                  f"{last['sec_per_step']:.3f} s per step, {last['skipped_steps']} skipped, {last['precision']}")
        print(f"run: {os.path.abspath(args.out)}")
    return 0


# ------------------------------------------------------------------------------------------------ options
def _add_common(sub) -> None:
    """--data, --out, --profile, --steps / --budget-s, --seed, --resume, --precision, --quiet."""
    sub.add_argument("--data", required=True, help="prepared cache (source subjects; target for a few-shot stage)")
    sub.add_argument("--out", required=True, help="run directory")
    sub.add_argument("--profile", default=None,
                     help="paper, gpu, small, tiny or a JSON config (default: small, or the parent run's)")
    sub.add_argument("--steps", type=positive_int, default=None, help="override the profile's length")
    sub.add_argument("--budget-s", type=positive_float, default=None, metavar="SECONDS",
                     help="train for about SECONDS of optimisation on this machine instead of a number of steps: "
                          "the steps are fitted from a few timed ones when the run starts and recorded, so "
                          "--resume trains the same steps (comparisons at equal compute)")
    sub.add_argument("--seed", type=int, default=None)
    sub.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    sub.add_argument("--precision", choices=PRECISIONS, default=None,
                     help="override the profile's: auto = bf16 autocast where the device trains correctly in "
                          "bf16 (CUDA, AMX CPUs), else fp32")
    sub.add_argument("--quiet", action="store_true")


def _add_probe(sub) -> None:
    sub.add_argument("--probe-every", type=positive_int, default=None, metavar="N",
                     help="every N steps, measure held-out subjects (VAE: PSNR/SSIM per modality; LDM: "
                          "noise error per timestep band) into RUN/probe.csv")
    sub.add_argument("--probe-data", default=None, help="cache holding the probe subjects (default: --data)")
    sub.add_argument("--probe-subjects", nargs="+", default=None,
                     help="held-out probe subjects (default for few-shot runs: 2 of the split's test subjects)")


def _add_fewshot(sub, required: bool) -> None:
    """--init (the source run adapted), --k, --n-test, --split."""
    sub.add_argument("--init", required=required, default=None, help="finished source run to adapt (few-shot stage)")
    sub.add_argument("--k", type=positive_int, default=None, help="few-shot target subjects (10, 16)")
    sub.add_argument("--n-test", type=non_negative_int, default=None,
                     help="held-out target test patients (default: min(64, all but K))")
    sub.add_argument("--split", default=None, help="a saved split JSON instead of --k")


def _add_condition(sub) -> None:
    sub.add_argument("--condition", choices=CONDITIONS, default=None,
                     help="what the generator is conditioned on: mask (the paper's binary tumour mask), "
                          "regions (the BraTS regions WT/TC/ET of the label map) or regions+brain (and the "
                          "brain mask); default mask, or the source run's for few-shot")


def _add_selection(sub, fewshot: bool) -> None:
    sub.add_argument("--select-by-probe", action="store_true",
                     help="with --probe-every: keep the EMA weights of the probed step with the lowest "
                          "held-out noise error instead of the last (few-shot: probed on up to 4 pool patients "
                          "of the split unless --probe-subjects)")
    if fewshot:
        sub.add_argument("--from-scratch", action="store_true",
                         help="train the few-shot stage from random weights (the source run gives only its VAE): "
                              "the no-pre-training ablation")


def _add_inpaint(sub) -> None:
    sub.add_argument("--inpaint", action="store_true",
                     help="the ControlNet also reads the known part of the latent and is trained to fill random "
                          "regions (a tumour, another patient's tumour, an ellipsoid; half the examples plain "
                          "generation): a model for 'aldm edit' that still generates (not in the paper). With "
                          "--init of a run without it, the new input starts at zero: the run starts as its parent")


def _register_vae(stages) -> None:
    sub = stages.add_parser("vae", help="stage 1: the 3D VAE on the source cache")
    _add_common(sub)
    _add_probe(sub)
    sub.add_argument("--decoder-regions", action="store_true",
                     help="the decoder also sees the tumour's BraTS regions (WT/TC/ET of the label map) at "
                          "every resolution, so thin sub-regions (the enhancing rim) are drawn where the label "
                          "map puts them; its LDMs must be trained with --condition regions (not in the paper)")


def _register_latent(stages) -> None:
    source = stages.add_parser("source", help="stages 2-3: latent statistics and the latent diffusion model "
                                              "pre-trained on the source cache (--vae)")
    _add_common(source)
    _add_probe(source)
    source.add_argument("--vae", required=True, help="finished VAE run")
    _add_condition(source)
    _add_selection(source, fewshot=False)
    _add_inpaint(source)

    fewshot = stages.add_parser("fewshot", help="stage 4: few-shot adaptation of a source run (--init) on K "
                                                "target subjects (--k or --split)")
    _add_common(fewshot)
    _add_probe(fewshot)
    _add_fewshot(fewshot, required=True)
    _add_condition(fewshot)
    _add_selection(fewshot, fewshot=True)
    _add_inpaint(fewshot)

    ldm = stages.add_parser("ldm", help="stage 3 with --vae (as 'source'), stage 4 with --init --k (as 'fewshot')")
    _add_common(ldm)
    _add_probe(ldm)
    ldm.add_argument("--vae", default=None, help="finished VAE run (stage 3)")
    _add_fewshot(ldm, required=False)
    _add_condition(ldm)
    _add_selection(ldm, fewshot=True)
    _add_inpaint(ldm)


def _register_baseline(stages) -> None:
    sub = stages.add_parser("baseline", help="CGAN / 3M-CGAN / VAE-GAN / pixel DDPM: source training, or few-shot "
                                             "with --init --k")
    sub.add_argument("model", choices=comparison_models(),
                     help="cgan, cgan3m, vaegan (the paper's GANs) or pixelddpm (a pixel-space DDPM with the "
                          "condition concatenated to its input, as Med-DDPM)")
    _add_common(sub)
    _add_fewshot(sub, required=False)
    _add_condition(sub)


def _guidance_range(text: str) -> tuple:
    """``LOW,HIGH`` -> (low, high) (an argparse error otherwise)."""
    import argparse

    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    return (low, high)


def _register_distill(stages) -> None:
    sub = stages.add_parser("distill", help="a few-step student of a finished ALDM run (--teacher): guidance folded "
                                            "into the network, then progressive distillation to --steps-to steps")
    sub.add_argument("--teacher", required=True, help="finished ALDM run (source, few-shot, or a student to halve "
                                                      "further)")
    sub.add_argument("--out", required=True, help="run directory of the student")
    sub.add_argument("--steps-to", type=positive_int, default=None,
                     help="steps the student samples in (default: the profile's, 4 for small; a student teacher: "
                          "half its own)")
    sub.add_argument("--teacher-steps", type=positive_int, default=None,
                     help="DDIM steps of the first halving round's teacher, steps-to times a power of two "
                          "(default: the profile's, 16)")
    sub.add_argument("--guidance-range", type=_guidance_range, default=None, metavar="LOW,HIGH",
                     help="guidance scales s the student learns (default 1,5)")
    sub.add_argument("--method", choices=DISTILL_METHODS, default=None,
                     help="progressive: halve the steps round by round (default); direct: one round in which "
                          "each student step learns teacher-steps / steps-to of its teacher's")
    sub.add_argument("--data", default=None, help="the cache holding the teacher's subjects (default: the "
                                                  "teacher's own)")
    sub.add_argument("--profile", default=None,
                     help="whose distillation settings to take (default: the teacher's named profile)")
    sub.add_argument("--steps", type=positive_int, default=None, help="steps of each phase")
    sub.add_argument("--budget-s", type=positive_float, default=None, metavar="SECONDS",
                     help="the whole distillation's seconds of optimisation on this machine, shared equally by "
                          "its phases (fitted from timed steps, recorded, so --resume trains the same steps)")
    sub.add_argument("--seed", type=int, default=None)
    sub.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    sub.add_argument("--precision", choices=PRECISIONS, default=None,
                     help="training precision (default: the profile's, auto)")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")


def register(commands) -> None:
    """Add ``aldm train`` and its stages to ``commands`` (an argparse sub-parsers object)."""
    train = commands.add_parser("train", help="train the VAE (stage 1), the latent diffusion model (stages 3, 4) "
                                              "or a comparison model")
    stages = train.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    _register_vae(stages)
    _register_latent(stages)
    _register_baseline(stages)
    _register_distill(stages)
    for sub in stages.choices.values():
        sub.set_defaults(func=_cmd_train)
