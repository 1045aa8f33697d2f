"""The ``aldm`` command line: one entry point, sub-commands per stage.

Every user-facing failure is an :class:`~aldm.errors.AldmError`, printed as one line
(``aldm: error: <file>: <what is wrong>``) with exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .conditions import CONDITIONS
from .config import PRECISIONS
from .errors import AldmError
from .models.families import BASELINES, training_stage


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


# ------------------------------------------------------------------------------------------------ data
def _cmd_data_synth(args) -> int:
    from .data.synth import synth_cohorts

    start = time.perf_counter()
    roots = synth_cohorts(args.out, args.n_source, args.n_target, seed=args.seed, workers=args.workers,
                          progress=not args.quiet)
    n = args.n_source + args.n_target
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n_source} source subjects to {roots['source']}")
    print(f"wrote {args.n_target} target subjects to {roots['target']}")
    print(f"{elapsed:.1f} s in all, {elapsed / max(n, 1):.2f} s per subject with {args.workers} worker(s)")
    return 0


def _cmd_data_prepare(args) -> int:
    from .data.cache import prepare_dataset
    from .data.preprocess import PrepConfig
    from .modalities import parse_modalities

    config = PrepConfig(size=args.size, mode=args.mode, spacing=args.spacing,
                        modalities=parse_modalities(args.modalities, "--modalities"))
    start = time.perf_counter()
    summary = prepare_dataset(args.dataset, args.root, args.out, config, domain=args.domain,
                              sessions=args.sessions, workers=args.workers, strict=args.strict, limit=args.limit,
                              progress=not args.quiet)
    elapsed = time.perf_counter() - start
    print(summary.table())
    if summary.prepared:
        print(f"{elapsed / summary.prepared:.2f} s per prepared subject with {args.workers} worker(s)")
    print(f"cache: {os.path.abspath(args.out)}")
    return 1 if summary.failed and not (summary.prepared or summary.cached) else 0


def _cmd_data_verify(args) -> int:
    from .artifacts.cache import PreparedCache
    from .artifacts.samples import SampleSet

    if PreparedCache.is_cache(args.cache):
        cache = PreparedCache(args.cache)
        problems = cache.verify()
        n = len(cache.rows())
        what = "cached subjects"
    else:
        n, problems = SampleSet(args.cache).verify()
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{n} generated samples checked: {len(problems)} problem(s)")
        return 1 if problems else 0
    for line in problems:
        print(line, file=sys.stderr)
    print(f"{n - len(problems)} of {n} {what} intact")
    return 1 if problems else 0


def _cmd_data_split(args) -> int:
    from .artifacts.cache import PreparedCache
    from .artifacts.split import save_split
    from .data.splits import few_shot_split, with_cv_folds

    rows = PreparedCache(args.cache).require().rows(args.domain)
    stratify = None if args.stratify == "none" else args.stratify
    split = few_shot_split(rows, args.k, args.n_test, seed=args.seed, stratify=stratify)
    split = with_cv_folds(rows, split, args.folds, args.repeats, args.seed) if args.folds else {**split, "cv": []}
    out = args.out or os.path.join(args.cache, "splits", f"k{args.k}_seed{args.seed}.json")
    save_split(out, split)
    print(f"K={args.k} few-shot: {len(split['k_shot'])} subjects; held-out test: {len(split['test'])}; "
          f"pool: {len(split['pool'])}; CV folds: {len(split['cv'])}")
    print(f"split: {out}")
    return 0


# ------------------------------------------------------------------------------------------------ train
def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {value}")
    return value


def _finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _probe_subjects(args):
    """The held-out probe of ``aldm train --probe-every``: --probe-subjects of --probe-data (default
    --data), or of the few-shot split (--split, or the run's own when resuming) 2 test subjects — or, with
    --select-by-probe, up to 4 pool subjects (weights chosen on test patients would be tuned to the test)."""
    from .artifacts.run import Run
    from .artifacts.split import load_split
    from .train.stages import ProbeSubjects

    if not args.probe_every:
        return None
    subjects = args.probe_subjects
    if subjects is None:
        split_path = args.split or (Run(args.out).split_path if args.resume else None)
        if not split_path or not os.path.exists(split_path):
            raise AldmError("--probe-every needs --probe-subjects (held-out subjects), or a few-shot --split")
        split = load_split(split_path)
        subjects = split["pool"][:4] if getattr(args, "select_by_probe", False) else split["test"][:2]
        if not subjects:
            raise AldmError(f"{split_path}: no pool subject (neither few-shot nor test) to select on; give "
                            "--probe-subjects")
    return ProbeSubjects(args.probe_data or args.data, list(subjects))


# what a --profile given with --resume must agree on with the run's own config.json (the rest: the
# run's settings, --steps / --seed / --precision overrides and probes, may differ)
PROFILE_IDENTITY = ("name", "image_size", "condition", "vae", "unet", "diffusion", "baseline", "pixel")


def _resumed_profile(args):
    """With ``--resume`` on an existing run: the run's own profile (its ``config.json``; damaged: one line),
    refusing a ``--profile`` that contradicts it; else None."""
    from .artifacts.run import Run
    from .config import get_profile, with_condition

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
        differs = [k for k in PROFILE_IDENTITY if given.to_dict()[k] != own.to_dict()[k]]
        if differs:
            raise AldmError(f"{run.file('config.json')}: the run was started with profile {own.name!r}; --profile "
                            f"{args.profile} differs in {', '.join(differs)}; resume without --profile (the run's "
                            "own is used) or choose another --out")
    return own


def _cmd_train(args) -> int:
    from .artifacts.run import Run
    from .config import get_profile, with_decoder_regions
    from .distributed import init_distributed, shutdown
    from .train.stages import train_ldm, train_vae, with_probe_every

    resumed = _resumed_profile(args)
    if args.steps and args.budget_s:
        raise AldmError("give --steps or --budget-s, not both")
    info = init_distributed()
    try:
        probe = _probe_subjects(args) if args.stage != "baseline" else None
        if args.stage == "baseline":
            from .train.baselines import train_baseline

            profile = resumed or (get_profile(args.profile) if args.profile else (Run(args.init).profile if args.init
                                                                                  else get_profile("small")))
            profile = _with_budget(profile, training_stage(args.model, bool(args.init)), args.budget_s)
            last = train_baseline(args.model, args.data, args.out, profile, init_run=args.init, k=args.k,
                                  n_test=args.n_test, split_path=args.split, steps=args.steps, seed=args.seed,
                                  resume=args.resume, dist_info=info, progress=not args.quiet,
                                  precision=args.precision, condition=args.condition)
        elif args.stage == "vae":
            profile = resumed or get_profile(args.profile or "small")
            if args.decoder_regions and not profile.vae.decoder_regions:
                if resumed:
                    raise AldmError(f"{args.out}: the run's VAE was started without --decoder-regions; resume "
                                    "without it or choose another --out")
                profile = with_decoder_regions(profile)
            profile = with_probe_every(_with_budget(profile, "train_vae", args.budget_s), args.probe_every)
            last = train_vae(args.data, args.out, profile, steps=args.steps, seed=args.seed, resume=args.resume,
                             dist_info=info, progress=not args.quiet, precision=args.precision, probe=probe)
        else:
            parent = args.init or args.vae
            profile = resumed or (get_profile(args.profile) if args.profile else (Run(parent).profile if parent
                                                                                  else None))
            profile = _with_budget(profile, "train_fewshot" if args.init else "train_ldm", args.budget_s)
            profile = with_probe_every(profile, args.probe_every)
            if args.select_by_probe:
                from dataclasses import replace

                if not args.probe_every:
                    raise AldmError("--select-by-probe needs --probe-every N (the held-out probe it selects by)")
                stage = "train_fewshot" if args.init else "train_ldm"
                profile = replace(profile, **{stage: replace(getattr(profile, stage), select_by_probe=True)})
            last = train_ldm(args.data, args.out, profile, vae_run=args.vae, init_run=args.init, k=args.k,
                             n_test=args.n_test, split_path=args.split, steps=args.steps, seed=args.seed,
                             resume=args.resume, dist_info=info, progress=not args.quiet,
                             precision=args.precision, probe=probe, condition=args.condition,
                             from_scratch=args.from_scratch)
    finally:
        shutdown(info)
    if info.is_main:
        if last["loss"] != last["loss"]:  # NaN: resumed at its last step, nothing left to train
            print(f"{args.stage}: all {last['step']} steps were done; weights written")
        else:
            print(f"{args.stage}: {last['step']} steps, final loss {last['loss']:.4f}, "
                  f"{last['sec_per_step']:.3f} s per step, {last['skipped_steps']} skipped, {last['precision']}")
        print(f"run: {os.path.abspath(args.out)}")
    return 0


def _with_budget(profile, stage: str, seconds: float | None):
    """``profile`` with ``--budget-s`` on the stage it trains (None: no profile yet, the parent's is taken)."""
    from .config import with_budget

    return profile if profile is None else with_budget(profile, stage, seconds)


def _cmd_generate(args) -> int:
    from .diffusion.settings import GenerationSettings
    from .distributed import init_distributed, shutdown
    from .generate import generate

    settings = GenerationSettings(guidance=args.guidance, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                  precision=args.precision)
    info = init_distributed()
    try:
        start = time.perf_counter()
        rows = generate(args.model, args.out, args.n, masks=args.masks, subjects=args.subjects, settings=settings,
                        batch_size=args.batch_size, dist_info=info, device=args.device, progress=not args.quiet,
                        decode_slab=args.decode_slab, overwrite=args.overwrite)
        elapsed = time.perf_counter() - start
    finally:
        shutdown(info)
    if info.is_main:
        print(f"{len(rows)} samples in {os.path.abspath(args.out)} ({elapsed:.1f} s for this run)")
    return 0


def _cmd_evaluate(args) -> int:
    import json

    from .evaluate import evaluate

    modalities = None if args.frd is None else () if args.frd == "none" else tuple(args.frd.split(","))
    result = evaluate(args.real, args.synthetic, args.out, inception=args.inception, device=args.device,
                      frd_modalities=modalities, segmenter=args.segmenter)
    shown = {k: v for k, v in result.items() if not isinstance(v, dict)}
    print(json.dumps(shown, indent=2))
    print(f"metrics: {os.path.abspath(os.path.join(args.out, 'metrics.json'))}")
    return 0


def _cmd_segmenter(args) -> int:
    from .evaluators.segmenter import SegmenterConfig, fit_on_caches, held_out_subjects

    config = SegmenterConfig(init_filters=args.width, steps=args.steps, seed=args.seed, device=args.device)
    done = fit_on_caches(args.data, args.out, config, held_out_subjects(args.holdout), progress=not args.quiet,
                         resume=args.resume, regions=args.regions)
    print(f"segmenter of {'/'.join(done['regions'])} trained on {done['subjects']} subjects ({done['held_out']} held "
          f"out): {done['out']}")
    return 0


def _cmd_experiment(args) -> int:
    from .experiments.table1 import ExperimentConfig, run_table1

    report = run_table1(ExperimentConfig.load(args.config), progress=not args.quiet)
    print(f"report: {os.path.abspath(report)}")
    return 0


def _cmd_segmentation_experiment(args) -> int:
    from .experiments.segmentation import run_segmentation
    from .experiments.table1 import ExperimentConfig

    table = run_segmentation(ExperimentConfig.load(args.config), progress=not args.quiet)
    print(f"segmentation table: {os.path.abspath(table)}")
    return 0


def _cmd_export(args) -> int:
    from .export import export

    subjects = args.real_subjects
    if args.real_split:
        from .artifacts.run import Run
        from .artifacts.split import load_split

        split = Run(args.real_split).split() if os.path.isdir(args.real_split) else load_split(args.real_split)
        if split is None:
            raise AldmError(f"{args.real_split}: a run without a split; give a few-shot run or a split JSON")
        subjects = split["k_shot"]
    done = export(args.format, args.out, synthetic=args.synthetic, real=args.real, real_subjects=subjects,
                  overwrite=args.overwrite)
    print(f"{args.format}: {done['real']} real + {done['synthetic']} synthetic cases in {done['out']} "
          f"(listed in {done['cases_csv']})")
    return 0


def _cmd_serve(args) -> int:
    import uvicorn

    from .serve.app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"aldm: serving on {args.host}: anyone who can reach this address can generate and download; "
              "requests must name it (or a --allow-host name) in their Host header", file=sys.stderr)
    app = create_app(args.model, out=args.out, data=args.data, max_pending=args.max_queue, device=args.device,
                     allowed_hosts=(args.host, *(args.allow_host or ())))
    print(f"aldm: http://{args.host}:{args.port}/  (jobs and samples in {os.path.abspath(args.out)})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _cmd_demo(args) -> int:
    from .experiments.demo import run_demo

    start = time.perf_counter()
    out = args.out or ("aldm-demo-regions" if args.regions else "aldm-demo")
    report = run_demo(out, quick=args.quick, seed=args.seed, workers=args.workers, progress=not args.quiet,
                      segmentation=args.segmentation, regions=args.regions)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"report: {os.path.abspath(report)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``aldm`` command line: every sub-command, its options and their help."""
    from .data.cohorts import DATASETS
    from .data.preprocess import MODES
    from .diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS
    from .diffusion.settings import DEFAULT_GUIDANCE, GUIDANCE_RANGE

    parser = argparse.ArgumentParser(
        prog="aldm",
        description="Few-shot cross-domain 3D glioma MRI synthesis (Anatomically-conditioned Latent Diffusion).",
    )
    from .allocator import current_allocator

    parser.add_argument("--version", action="version",
                        version=f"aldm {__version__} (allocator: {current_allocator()})")
    parser.add_argument("--deterministic", action="store_true",
                        help="bitwise-reproducible GPU kernels (slower; also ALDM_DETERMINISTIC=1); "
                             "see docs/reliability.md")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    data = commands.add_parser("data", help="phantom cohorts, dataset ingestion, cache, splits")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_commands.required = True

    synth = data_commands.add_parser("synth", help="write embedded phantom cohorts in the real datasets' layouts")
    synth.add_argument("out", help="output folder (gets UPENN-GBM/ and UCSF-PDGM/)")
    synth.add_argument("--n-source", type=_non_negative_int, default=24, help="UPENN-GBM-like subjects")
    synth.add_argument("--n-target", type=_non_negative_int, default=24, help="UCSF-PDGM-like subjects")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=_positive_int, default=1)
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_data_synth)

    prep = data_commands.add_parser("prepare", help="verify, preprocess and cache a dataset as downloaded")
    prep.add_argument("dataset", choices=DATASETS)
    prep.add_argument("root", help="the dataset's folder as downloaded")
    prep.add_argument("--out", required=True, help="cache folder")
    prep.add_argument("--size", type=_positive_int, default=112, help="model cube edge (voxels)")
    prep.add_argument("--mode", choices=MODES, default="resize",
                      help="resize: brain box resized to the cube (paper reference); crop-pad: fixed spacing")
    prep.add_argument("--spacing", type=float, default=1.5, help="mm, crop-pad mode")
    prep.add_argument("--modalities", default="t1,t2,flair",
                      help="the cache's channels, in order: any of t1, t1c, t2, flair (default: the paper's "
                           "t1,t2,flair); the VAE and the baselines trained on the cache take as many")
    prep.add_argument("--domain", choices=("source", "target"), default=None,
                      help="override the dataset's default domain")
    prep.add_argument("--sessions", choices=("baseline", "all"), default="baseline",
                      help="UPENN-GBM: baseline _11 scans only (default) or all sessions")
    prep.add_argument("--workers", type=_positive_int, default=1)
    prep.add_argument("--strict", action="store_true", help="stop at the first bad subject")
    prep.add_argument("--limit", type=_positive_int, default=None, help="only the first N subjects")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_cmd_data_prepare)

    verify = data_commands.add_parser("verify", help="check a cache's or a generate folder's files against their "
                                                     "recorded checksums")
    verify.add_argument("cache", metavar="FOLDER", help="a prepared cache or an aldm generate output folder")
    verify.set_defaults(func=_cmd_data_verify)

    split = data_commands.add_parser("split", help="patient-level K-shot / held-out test / 3x5-fold CV split")
    split.add_argument("cache")
    split.add_argument("--k", type=_positive_int, default=16, help="few-shot subjects (paper: 10, 16)")
    split.add_argument("--n-test", type=_non_negative_int, default=None,
                       help="held-out test patients (default: min(64, all but K); paper: 64)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--stratify", choices=("idh", "grade", "none"), default="idh")
    split.add_argument("--domain", choices=("source", "target"), default=None)
    split.add_argument("--folds", type=_non_negative_int, default=5, help="CV folds over test+pool (0: none)")
    split.add_argument("--repeats", type=_positive_int, default=3)
    split.add_argument("--out", default=None, help="JSON path (default CACHE/splits/k<K>_seed<S>.json)")
    split.set_defaults(func=_cmd_data_split)

    train = commands.add_parser("train", help="train the VAE (stage 1) or the latent diffusion model (stages 3, 4)")
    train_commands = train.add_subparsers(dest="stage", metavar="STAGE")
    train_commands.required = True
    for stage, text in (("vae", "stage 1: the 3D VAE on the source cache"),
                        ("ldm", "stage 3 (--vae): source pre-training; stage 4 (--init --k): few-shot adaptation"),
                        ("baseline", "CGAN / 3M-CGAN / VAE-GAN / pixel DDPM: source training, or few-shot with "
                                     "--init --k")):
        sub = train_commands.add_parser(stage, help=text)
        if stage == "baseline":
            sub.add_argument("model", choices=BASELINES,
                             help="cgan, cgan3m, vaegan (the paper's GANs) or pixelddpm (a pixel-space DDPM with the "
                                  "condition concatenated to its input, as Med-DDPM)")
        sub.add_argument("--data", required=True, help="prepared cache (source subjects; target for --init)")
        sub.add_argument("--out", required=True, help="run directory")
        sub.add_argument("--profile", default=None,
                         help="paper, gpu, small, tiny or a JSON config (default: small, or the parent run's)")
        sub.add_argument("--steps", type=_positive_int, default=None, help="override the profile's length")
        sub.add_argument("--budget-s", type=_positive_float, default=None, metavar="SECONDS",
                         help="train for about SECONDS of optimisation on this machine instead of a number of steps: "
                              "the steps are fitted from a few timed ones when the run starts and recorded, so "
                              "--resume trains the same steps (comparisons at equal compute)")
        sub.add_argument("--seed", type=int, default=None)
        sub.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
        if stage != "baseline":
            sub.add_argument("--probe-every", type=_positive_int, default=None, metavar="N",
                             help="every N steps, measure held-out subjects (VAE: PSNR/SSIM per modality; LDM: "
                                  "noise error per timestep band) into RUN/probe.csv")
            sub.add_argument("--probe-data", default=None, help="cache holding the probe subjects (default: --data)")
            sub.add_argument("--probe-subjects", nargs="+", default=None,
                             help="held-out probe subjects (default for few-shot runs: 2 of the split's test subjects)")
        sub.add_argument("--precision", choices=PRECISIONS, default=None,
                         help="override the profile's: auto = bf16 autocast where the device trains correctly in "
                              "bf16 (CUDA, AMX CPUs), else fp32")
        sub.add_argument("--quiet", action="store_true")
        if stage == "vae":
            sub.add_argument("--decoder-regions", action="store_true",
                             help="the decoder also sees the tumour's BraTS regions (WT/TC/ET of the label map) at "
                                  "every resolution, so thin sub-regions (the enhancing rim) are drawn where the label "
                                  "map puts them; its LDMs must be trained with --condition regions (not in the paper)")
        if stage == "ldm":
            sub.add_argument("--vae", default=None, help="finished VAE run (stage 3)")
        if stage in ("ldm", "baseline"):
            sub.add_argument("--init", default=None, help="finished source run to adapt (few-shot stage)")
            sub.add_argument("--k", type=_positive_int, default=None, help="few-shot target subjects (10, 16)")
            sub.add_argument("--n-test", type=_non_negative_int, default=None,
                             help="held-out target test patients (default: min(64, all but K))")
            sub.add_argument("--split", default=None, help="a saved split JSON instead of --k")
            sub.add_argument("--condition", choices=CONDITIONS, default=None,
                             help="what the generator is conditioned on: mask (the paper's binary tumour mask), "
                                  "regions (the BraTS regions WT/TC/ET of the label map) or regions+brain (and the "
                                  "brain mask); default mask, or the source run's for few-shot")
        if stage == "ldm":
            sub.add_argument("--select-by-probe", action="store_true",
                             help="with --probe-every: keep the EMA weights of the probed step with the lowest "
                                  "held-out noise error instead of the last (few-shot: probed on up to 4 pool patients "
                                  "of the split unless --probe-subjects)")
            sub.add_argument("--from-scratch", action="store_true",
                             help="with --init: train the few-shot stage from random weights (the source run gives "
                                  "only its VAE): the no-pre-training ablation")
        sub.set_defaults(func=_cmd_train)

    gen = commands.add_parser("generate", help="synthetic volumes from masks, NIfTI in model and native space")
    gen.add_argument("--model", required=True, help="finished LDM, few-shot or baseline run")
    gen.add_argument("--masks", default=None,
                     help="cache:PATH, folder:PATH, relocated:PATH or appendix:PATH (paper Appendix A order); "
                          "default: the model's held-out subjects")
    gen.add_argument("--subjects", nargs="+", default=None, help="only these mask subjects")
    gen.add_argument("--n", type=_positive_int, default=8, help="number of samples")
    gen.add_argument("--guidance", type=_finite_float, default=DEFAULT_GUIDANCE,
                     help=f"classifier-free guidance scale s (Eq. 3.8), {GUIDANCE_RANGE[0]:g} to {GUIDANCE_RANGE[1]:g}")
    gen.add_argument("--steps", type=_positive_int, default=None,
                     help=f"sampler steps (default {DEFAULT_STEPS}; DDPM: all T)")
    gen.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                     help="dpmpp2m (DPM-Solver++ 2M, best per step; default), ddim, or ddpm (ancestral, all T steps)")
    gen.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    gen.add_argument("--batch-size", type=_positive_int, default=4)
    gen.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="ALDM and the pixel DDPM: auto = bf16 autocast where the GPU or CPU computes bf16 "
                          "natively (CUDA, AMX / AVX512-BF16), else fp32")
    gen.add_argument("--decode-slab", type=_non_negative_int, default=0, metavar="PLANES",
                     help="ALDM: VAE-decode the full-resolution stage in depth slabs of PLANES planes (same volumes, "
                          "about half the decoder's peak memory, a little slower; 0 = whole volume)")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    gen.add_argument("--out", required=True)
    gen.add_argument("--overwrite", action="store_true",
                     help="remove the samples already in --out first (a re-run otherwise continues them only when "
                          "they were made with the same model, settings, seeds and masks)")
    gen.add_argument("--quiet", action="store_true")
    gen.set_defaults(func=_cmd_generate)

    ev = commands.add_parser("evaluate", help="SSIM, FID, diversity and memorisation of a synthetic set")
    ev.add_argument("--real", required=True, help="prepared cache holding the mask subjects' real volumes")
    ev.add_argument("--synthetic", required=True, help="an aldm generate output folder")
    ev.add_argument("--out", required=True, help="folder for metrics.json and per_patient.csv")
    ev.add_argument("--inception", default=None, help="FID Inception weights file (pt_inception-2015-12-05)")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--frd", default=None,
                    help="modalities for FRD (comma-separated file stems, e.g. t1,flair) or none; default: all of the "
                         "cache's")
    ev.add_argument("--segmenter", default=None,
                    help="a folder of aldm segmenter train: adds mask Dice (ceiling: the real volumes; floor: "
                         "shuffled masks)")
    ev.set_defaults(func=_cmd_evaluate)

    seg = commands.add_parser("segmenter", help="the 3D tumour segmenter that measures mask adherence")
    seg_commands = seg.add_subparsers(dest="segmenter_command", metavar="COMMAND")
    seg_commands.required = True
    seg_train = seg_commands.add_parser("train", help="train it on real cached volumes, held-out patients excluded")
    seg_train.add_argument("--data", required=True, nargs="+", help="prepared caches (one size)")
    seg_train.add_argument("--out", required=True, help="the segmenter's run folder (run.json, weights.pt)")
    seg_train.add_argument("--resume", action="store_true", help="continue the segmenter in --out exactly")
    seg_train.add_argument("--holdout", nargs="*", default=[],
                           help="few-shot runs or split JSON files whose held-out test subjects are left out")
    seg_train.add_argument("--steps", type=_positive_int, default=300)
    seg_train.add_argument("--width", type=_positive_int, default=8, help="SegResNet init_filters")
    seg_train.add_argument("--regions", choices=("auto", "wt", "brats"), default="auto",
                           help="what it predicts: wt (whole tumour) or brats (WT, TC, ET); auto: brats when the "
                                "caches' label maps hold sub-regions")
    seg_train.add_argument("--seed", type=int, default=0)
    seg_train.add_argument("--device", default="cpu")
    seg_train.add_argument("--quiet", action="store_true")
    seg_train.set_defaults(func=_cmd_segmenter)

    exp_out = commands.add_parser("export", help="synthetic (and real) cases as nnU-Net v2 or BraTS 2021 training data")
    export_commands = exp_out.add_subparsers(dest="format", metavar="FORMAT")
    export_commands.required = True
    for fmt, text in (("nnunet", "nnU-Net v2 raw dataset (imagesTr, labelsTr, dataset.json with the BraTS regions)"),
                      ("brats", "BraTS 2021 layout on the 240x240x155 grid (aldm data prepare brats2021 reads it)")):
        sub = export_commands.add_parser(fmt, help=text)
        sub.add_argument("--synthetic", default=None, help="an aldm generate folder (its samples need seg.nii.gz)")
        sub.add_argument("--real", default=None, help="a prepared cache whose real subjects are exported too")
        sub.add_argument("--real-subjects", nargs="+", default=None, help="only these real subjects (default: all)")
        sub.add_argument("--real-split", default=None,
                         help="a few-shot run or split JSON: export its K few-shot subjects as the real cases")
        sub.add_argument("--out", required=True,
                         help="nnUNet_raw/Dataset<NNN>_<Name>" if fmt == "nnunet" else "output folder")
        sub.add_argument("--overwrite", action="store_true", help="replace --out when it is not empty")
        sub.set_defaults(func=_cmd_export)

    exp = commands.add_parser("experiment", help="the paper's Table 1 and Figures 2-5, and downstream segmentation; "
                                                 "resumable")
    exp_commands = exp.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    exp_commands.required = True
    t1 = exp_commands.add_parser("table1", help="ALDM (K, s) and the baselines through the whole protocol")
    t1.add_argument("--config", required=True, help="experiment JSON (see docs/evaluation.md)")
    t1.add_argument("--quiet", action="store_true")
    t1.set_defaults(func=_cmd_experiment)
    seg_exp = exp_commands.add_parser(
        "segmentation", help="downstream tumour segmentation: K real patients vs K real + N synthetic, synthetic "
                             "only, all real (same config, split and generators as table1)")
    seg_exp.add_argument("--config", required=True, help="experiment JSON; its \"segmentation\" section holds the "
                                                        "settings (see docs/evaluation.md)")
    seg_exp.add_argument("--quiet", action="store_true")
    seg_exp.set_defaults(func=_cmd_segmentation_experiment)

    serve = commands.add_parser("serve", help="the web UI: on-demand generation with a 3-plane viewer")
    serve.add_argument("--model", action="append", required=True,
                       help="a finished LDM, few-shot or baseline run (repeat for several, e.g. GBM and PDGM)")
    serve.add_argument("--data", action="append", default=None,
                       help="prepared cache for masks and real volumes (default: each run's own; one for all "
                            "or one per --model)")
    serve.add_argument("--out", default="aldm-serve", help="jobs and samples, kept across restarts")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                       help="also answer requests for this Host name (a reverse proxy's; repeatable); others get 400 "
                            "(DNS-rebinding guard)")
    serve.add_argument("--max-queue", type=_positive_int, default=4, help="jobs queued or running at most")
    serve.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    serve.set_defaults(func=_cmd_serve)

    demo = commands.add_parser("demo", help="phantom data -> training -> generation -> evaluation -> report")
    demo.add_argument("--out", default=None, help="output folder (default ./aldm-demo, ./aldm-demo-regions)")
    demo.add_argument("--regions", action="store_true",
                      help="four modalities (T1, T1c, T2, FLAIR) and generators conditioned on the BraTS regions")
    demo.add_argument("--quick", action="store_true", help="tiny profile smoke run (a few minutes)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--segmentation", action="store_true",
                      help="also the downstream segmentation experiment (aldm experiment segmentation), in the "
                           "same report")
    demo.add_argument("--workers", type=_positive_int, default=2)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    """Run ``aldm`` with ``argv`` (None: sys.argv); returns the exit status. AldmError and bad input
    print one line, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .reproducibility import determinism_requested, force_determinism

    if determinism_requested(args.deterministic):
        force_determinism()
    from .interrupt import STOPPED_EXIT, Stopped
    from .io.atomic import WRITE_ERRORS, write_failure

    try:
        return args.func(args)
    except Stopped as exc:
        print(f"aldm: {exc}", file=sys.stderr)
        return STOPPED_EXIT
    except AldmError as exc:
        print(f"aldm: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        print(f"aldm: error: {write_failure(exc.filename or '(a file)', exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aldm: interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``aldm`` console script: re-run once with a faster allocator (aldm.allocator), then main()."""
    from .allocator import relaunch_with_fast_allocator

    relaunch_with_fast_allocator(["-m", "aldm.cli", *sys.argv[1:]])
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
