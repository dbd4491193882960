"""The ``fire`` command line's parser: every sub-command, option and help text (the commands
themselves: :mod:`fire_lightning.cli`)."""

from __future__ import annotations

import argparse

from .benchmark_inputs import PROTOCOLS
from .demo import DEMO_ANTS_ICE_EVERY, DEMO_REFINE_STEPS

DEFAULT_EXPERIMENT = "phantom2d"  # a shipped experiment, found by name (config.experiment_path)


def refine_options(parser) -> None:
    parser.add_argument("--refine", default=None, metavar="N", help="FIRE+IO: N steps of per-pair optimisation "
                        "(MI + smoothness) from the network's transform; 0 reproduces the network's output")
    parser.add_argument("--refine-lr-affine", default=None, metavar="LR",
                        help="Adam step of the affine part (default 1e-2)")
    parser.add_argument("--refine-lr-field", default=None, metavar="LR",
                        help="Adam step of the non-rigid field (default 2e-3)")
    parser.add_argument("--refine-smooth", default=None, metavar="W",
                        help="weight of the smoothness term, x the paper's lambda (default 1; 0: none)")


def peer_names(text: str) -> tuple[str, ...]:
    """``--peers ants,greedy,elastix`` → the peers' names; an unknown one is a usage error that lists them."""
    from .peers import parse_peers

    try:
        return parse_peers(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--peers: ")) from None


def build_parser(commands: dict) -> argparse.ArgumentParser:
    """The ``fire`` parser; ``commands``: sub-command name → the function that runs it (``func``)."""
    p = argparse.ArgumentParser(prog="fire", description="FIRE / ExFIRE multi-modal image registration")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from an experiment config")
    t.add_argument("config", nargs="?", help="experiment YAML, e.g. experiments/phantom2d.yaml (not needed with "
                   "--resume RUN_DIR, which uses the run's own config.yaml)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=200")
    t.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                   help="continue a run from its checkpoints/last.ckpt (default: the newest run of the experiment)")
    t.add_argument("--evaluate", action="store_true", help="evaluate on the test pairs after training")
    t.set_defaults(func=commands["train"])

    sw = sub.add_parser("sweep", help="a hyperparameter sweep from a W&B-format sweep file (Optuna or W&B)",
                        description="Runs the trials of SWEEP.yaml (W&B's sweep format: method, metric, parameters "
                                    "naming config keys, early_terminate, run_cap, command naming the experiment). "
                                    "Each trial is a run folder under the sweep folder, which also gets "
                                    "leaderboard.md/.csv and metric_vs_params.png. Stopped and started again, a sweep "
                                    "goes on where it stopped; no trial runs twice.")
    sw.add_argument("sweep", help="sweep file, e.g. experiments/sweeps/phantom2d_small.yaml")
    sw.add_argument("--backend", choices=("optuna", "wandb"), default=None,
                    help="optuna (default unless W&B is online): a study in SQLite under the sweep folder or "
                         "--storage; wandb: a W&B sweep with wandb.agent workers")
    sw.add_argument("--gpus", default=None, help="comma-separated GPU ids: one worker per GPU (default: trials one "
                    "after another in this process)")
    sw.add_argument("--count", type=int, default=None, help="trials this worker runs at most (default: up to "
                    "run_cap, or the whole grid)")
    sw.add_argument("--storage", default=None, help="Optuna database URL shared by workers on several machines "
                    "(e.g. postgresql://user@host/db; default sqlite:///SWEEP_FOLDER/optuna.db)")
    sw.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<sweep name>)")
    sw.add_argument("--seed", type=int, default=0, help="the sampler's seed (Optuna)")
    sw.add_argument("--sweep-id", default=None, help="join this W&B sweep instead of creating one")
    sw.add_argument("--project", default=None, help="W&B project (default: the experiment's logger.wandb_project)")
    sw.set_defaults(func=commands["sweep"])

    e = sub.add_parser("evaluate", help="evaluate a run on its held-out test pairs")
    e.add_argument("run", help="run folder (holds config.yaml and checkpoints/)")
    e.add_argument("--checkpoint", default=None, help="checkpoint (default: RUN/checkpoints/last.ckpt)")
    e.set_defaults(func=commands["evaluate"])

    pr = sub.add_parser("profile", help="where training time goes: data pipeline, training step, inference",
                        description="Measures, on this machine's device, the training loader alone (samples/s), "
                                    "training iterations/s with the time inside and between steps and the peak "
                                    "memory, and inference ms per pair; prints a table, writes JSON and says "
                                    "whether data or compute bounds training.")
    pr.add_argument("config", help="experiment YAML, e.g. experiments/phantom2d.yaml")
    pr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.precision=bf16-mixed")
    pr.add_argument("--steps", type=int, default=30, help="FIRE training iterations measured (default 30)")
    pr.add_argument("--warmup-steps", type=int, default=5, help="affine warm-up iterations measured, when the "
                    "config has a warm-up (default 5)")
    pr.add_argument("--loader-batches", type=int, default=30, help="batches drawn from the loader alone (default 30)")
    pr.add_argument("--inference-pairs", type=int, default=20, help="pairs timed at inference (default 20)")
    pr.add_argument("--out", default=None, help="JSON output (default: RUN_ROOT/profile/<experiment>-<cpu|cuda>.json)")
    pr.set_defaults(func=commands["profile"])

    b = sub.add_parser("benchmark", help="Tables 2 and 4: FIRE (or an MI-CNN run) against its classical peers "
                                         "(ANTs-Affine and ANTs-SyN; with --peers also Greedy and elastix) on the "
                                         "test pairs")
    b.add_argument("target", help="run folder (uses checkpoints/last.ckpt and its config) or a checkpoint file")
    b.add_argument("overrides", nargs="*", help="key=value overrides of the data config, e.g. data.n_test_images=2, "
                   "and of the inference-only model keys: model.affine.passes_eval=5, model.affine.fine_passes_eval=3, "
                   "model.affine.full_passes_eval=2 (a model trained with those levels), "
                   "model.affine.symmetric_passes_eval=2, model.nonrigid.passes_eval=3, "
                   "model.nonrigid.symmetric_passes_eval=1")
    b.add_argument("--split", default="test", choices=["test", "val"], help="score the test pairs (default) or the "
                   "validation pairs, to choose inference settings without the test pairs (output: RUN/benchmark-val)")
    b.add_argument("--checkpoint", default=None, help="checkpoint, a path or a name in RUN/checkpoints/ "
                   "(default: last.ckpt; output then in RUN/benchmark-<name>)")
    b.add_argument("--data", default=None, help="experiment YAML whose data section gives the test pairs "
                   "(default: the run's own)")
    b.add_argument("--out", default=None, help="output folder (default: RUN/benchmark)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads for FIRE and the peers alike (default: all)")
    b.add_argument("--max-pairs", type=int, default=None, help="only the first N test pairs")
    b.add_argument("--peers", type=peer_names, default=("ants",), metavar="NAMES", help="the classical peers, "
                   "comma-separated: ants (ANTs-Affine, ANTs-SyN; the default), greedy (Greedy-Affine, Greedy), "
                   "elastix (elastix-Affine, elastix-B-spline); each registers every pair with FIRE's threads")
    b.add_argument("--no-ants", action="store_true", help="skip the ANTs baselines (the other --peers stay)")
    b.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="other trained runs (folders or "
                   "checkpoints; FIRE or MI-CNN) scored on the same test pairs in the same tables, each row named "
                   "by its model (MI-CNN, MI-CNN-Affine; FIRE (run) where the name is taken) and timed alike")
    b.add_argument("--ants-preset", default="fair", choices=["fair", "antspyx-default"],
                   help="ANTs settings: dense sampling, full-resolution SyN and (2D) a multi-start affine (fair, "
                   "default), or antspyx's defaults")
    b.add_argument("--ants-ice-every", type=int, default=1, metavar="K", help="register one pair in K the other way "
                   "round too, for the peers' inverse-consistency error (untimed runs that double the peers' time; "
                   "default 1: every pair, 0: none)")
    b.add_argument("--explain", action="store_true", help="add the Grad-CAM measures of every test pair: share per "
                   "structure, A→B/B→A symmetry, discriminator divergence and its correlation with registration "
                   "error (explain.md, gradcam_example.png, and explain_correlation.png for adversarial models); "
                   "explain.* overrides choose what is explained")
    refine_options(b)
    b.add_argument("--shift", action="store_true", help="the shift benchmark instead: held-out pairs with one factor "
                   "at a time (elastic size and spacing, rotation, scale, translation, resolution, contrast, slice) "
                   "pushed beyond the training range, every method at each level (RUN/shift: shift.md, shift.png; "
                   "--max-pairs: pairs per level)")
    b.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS), help="score the test pairs of a named "
                   "earlier protocol (mild: the weak elastic part of the first benchmark; output RUN/benchmark-mild)")
    b.add_argument("--refine-curve", default=None, metavar="N1,N2,...", help="also FIRE+IO's Dice and seconds per "
                   "pair at each N (e.g. 0,10,25,50,100,200) against the ANTs rows: refine_curve.png/.md/.csv/.json")
    b.set_defaults(func=commands["benchmark"])

    d = sub.add_parser("demo", help="the main job: train on the embedded phantom, then the benchmark against ANTs "
                                    "with the Grad-CAM measures (fire benchmark --explain)")
    d.add_argument("--config", default=str(DEFAULT_EXPERIMENT))
    d.add_argument("overrides", nargs="*")
    d.add_argument("--no-ants", action="store_true", help="skip the ANTs baselines in the benchmark")
    d.add_argument("--ants-ice-every", type=int, default=DEMO_ANTS_ICE_EVERY, metavar="K", help="ANTs' "
                   f"inverse-consistency error on one pair in K (default {DEMO_ANTS_ICE_EVERY}; 1: every pair)")
    refine_options(d)
    d.set_defaults(refine=str(DEMO_REFINE_STEPS))
    d.set_defaults(func=commands["demo"])

    a = sub.add_parser("ablation", help="one table of several runs' benchmarks (same test pairs), each row with "
                                        "the command that reproduces it")
    a.add_argument("runs", nargs="+", help="run folders, each benchmarked (RUN/benchmark/results.json)")
    a.add_argument("--base", default=str(DEFAULT_EXPERIMENT),
                   help="the experiment the commands start from (default: experiments/phantom2d.yaml)")
    a.add_argument("--out", default=None, help="folder for ablation.md and ablation.csv")
    a.set_defaults(func=commands["ablation"])

    xp = sub.add_parser("export-pairs", help="a data config's test pairs as NIfTI files and a pairs CSV for "
                                             "`fire register --csv` (which then scores the warped labels)")
    xp.add_argument("config", help="experiment YAML or run folder (its config.yaml)")
    xp.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.test_seed=2026")
    xp.add_argument("--out", required=True, help="output folder")
    xp.add_argument("--max-pairs", type=int, default=None, help="only the first N test pairs")
    xp.add_argument("--orientation", default="LPS", choices=["RAS", "LPS"],
                    help="array orientation of the files (default LPS, as DICOM-derived NIfTI often is)")
    xp.set_defaults(func=commands["export_pairs"])

    dt = sub.add_parser("data", help="inspect a dataset").add_subparsers(dest="data_command", required=True)
    c = dt.add_parser("check", help="list a dataset's subjects, files, shapes, spacings, labels and the split, "
                                    "or the one-line error of what is wrong")
    c.add_argument("root", help="the dataset folder (as data.root)")
    c.add_argument("--dataset", default="mrbrains", help="data.name (default: mrbrains)")
    c.add_argument("--config", default=None, help="experiment YAML (default: the dataset's own, "
                   "experiments/acdc2d.yaml or experiments/mrbrains2d_t1_flair.yaml)")
    c.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.subject_split=[5,1,1]")
    c.set_defaults(func=commands["data_check"])

    r = sub.add_parser("register", help="register NIfTI images with a trained checkpoint",
                       description="Warp --moving onto --fixed (outputs in the fixed image's space), or every "
                                   "pair of --csv (columns moving,fixed,out[,moving_labels,out_labels,field,affine]; "
                                   "relative paths from the CSV's folder).")
    r.add_argument("--checkpoint", required=True, help="e.g. RUN/checkpoints/last.ckpt")
    r.add_argument("--moving", help="moving image (.nii / .nii.gz, 2D or 3D as the checkpoint)")
    r.add_argument("--fixed", help="fixed image (the outputs live on its grid)")
    r.add_argument("--out", help="warped moving image (.nii / .nii.gz)")
    r.add_argument("--moving-labels", help="label map on the moving image's grid (needs --out-labels)")
    r.add_argument("--out-labels", help="warped labels, nearest neighbour (needs --moving-labels)")
    r.add_argument("--field", help="ITK displacement field, fixed grid, LPS mm (.nii.gz, .nrrd, .mha; 2D: .nrrd, .mha)")
    r.add_argument("--affine", help="FIRE's affine part as an ITK transform (.mat ANTs/Matlab, .txt/.tfm text)")
    r.add_argument("--csv", help="batch mode: a CSV of pairs")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto (default): CUDA when present, else CPU")
    refine_options(r)
    r.set_defaults(func=commands["register"])

    x = sub.add_parser("explain", help="Grad-CAM maps of every FIRE component for one pair (ExFIRE)",
                       description="Grad-CAM of G, T_af and T_nr (both directions) and D^A, D^B (adversarial "
                                   "models) for --moving → --fixed: each map as NIfTI in the fixed image's space, "
                                   "a panel like ExFIRE Figs 2-4, and a table of the share of each map inside each "
                                   "structure (with labels), the A→B/B→A symmetry and the discriminators' "
                                   "real-vs-synthetic divergence.")
    x.add_argument("--checkpoint", required=True, help="e.g. RUN/checkpoints/last.ckpt")
    x.add_argument("--moving", required=True, help="moving image x^A (.nii / .nii.gz)")
    x.add_argument("--fixed", required=True, help="fixed image x^B (the maps are written on its grid)")
    x.add_argument("--moving-labels", help="label map on the moving image's grid (share of Grad-CAM per structure)")
    x.add_argument("--fixed-labels", help="label map on the fixed image's grid (share per structure; explain.region)")
    x.add_argument("--out", help="output folder (default: <fixed name>_explain)")
    x.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    x.add_argument("overrides", nargs="*", help="explain.* settings, e.g. explain.scalar_T_nr=nonrigid "
                                               "explain.region=[3] explain.layer=output")
    x.set_defaults(func=commands["explain"])
    return p
