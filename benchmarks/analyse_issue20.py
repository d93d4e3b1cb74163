"""The tables of benchmarks/RESULTS.md section 1.6 (issue 20: the class tilt on the loss on
CamVid) from the trials kept in benchmarks/results/issue20/camvid_online (params.json +
result.json of each) beside issue 9's baselines (benchmarks/results/issue9, the same budget):

    python -m benchmarks.analyse_issue20                 # markdown tables
    python -m benchmarks.analyse_issue20 --root DIR      # the issue-20 trials from another folder
    python -m benchmarks.analyse_issue20 --plot OUT.png  # also the weights' trajectories
    python -m benchmarks.analyse_issue20 --root benchmarks/results/issue20/camvid_full_res --alone
        # a study that ran its own baselines (studies/camvid_full_res.yaml): every row from --root

Per configuration: mean ± std over seeds at the last step (1200), the difference from MCCE
(and head to head against Lovász and class-balanced CE) with Welch's p, per-class IoU, and
the best and final evaluation step (400 / 800 / 1200) of mIoU, sorted bottom 25 % and worst.
"""
import argparse
import glob
import json
import sys

import numpy as np

from benchmarks import analyse_issue9 as a9

BASELINES = ["MCCE", "Focal", "class-balanced CE", "CE median-freq weights", "class-level TCE t=1", "Dice + CE", "Lovász"]


_A9_NAME_OF = a9.name_of  # load_new swaps a9.name_of for name_of: keep the original


def name_of(p):
    loss = p["loss"]
    if not loss["name"].startswith("class_tilt"):
        return _A9_NAME_OF(p)
    base = "CT-CE" if loss["name"] == "class_tilt_ce" else "CT-Lovász"
    lab = f"{base} t={loss['t']:g} {loss.get('class_signal', 'ce')}"
    if loss.get("weight_floor"):
        lab += f" floor {loss['weight_floor']:g}"
    return lab


def load_new(root, steps=1200):
    """Rows as analyse_issue9.load, with the class-tilt names."""
    original = a9.name_of
    a9.name_of = name_of
    try:
        return a9.load([root], steps)
    finally:
        a9.name_of = original


def history(roots, names, bottom, steps=1200):
    """Per configuration and evaluation step: the seeds' (mIoU, sorted bottom 25 %, worst)."""
    out = {}
    for r in roots:
        for d in sorted(glob.glob(f"{r}/trial_*")):
            try:
                p = json.load(open(f"{d}/params.json"))
                lines = [json.loads(x) for x in open(f"{d}/result.json").read().splitlines() if x.strip()]
            except (OSError, ValueError):
                continue
            n = name_of(p)
            if n not in names or not lines or lines[-1].get("step") != steps:
                continue
            for m in lines:
                u = {k[4:]: 100 * v for k, v in m.items() if k.startswith("iou/")}
                v = np.array(list(u.values()))
                out.setdefault(n, {}).setdefault(m["step"], []).append(
                    (np.nanmean(v), np.mean([u[c] for c in bottom]), np.nanmin(v)))
    return out


def print_steps(hist, names):
    print("\nBest and final step (mean over seeds at each evaluation; best = the step with the highest mean):\n")
    at = " / ".join(str(s) for s in sorted({s for h in hist.values() for s in h}))
    print(f"| configuration | mIoU @{at} | bottom 25% @{at} | worst @{at} | best step (bottom 25%) |")
    print("|---|---|---|---|---|")
    for n in names:
        h = hist.get(n)
        if not h:
            continue
        steps = sorted(h)
        cols = [" / ".join(f"{np.mean([x[i] for x in h[s]]):.1f}" for s in steps) for i in range(3)]
        best = max(steps, key=lambda s: np.mean([x[1] for x in h[s]]))
        print(f"| {n} | {cols[0]} | {cols[1]} | {cols[2]} | {best} |")


def plot_weights(root, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = {}
    for d in sorted(glob.glob(f"{root}/trial_*")):
        p = json.load(open(f"{d}/params.json"))
        if p["study"]["seed"] != 0:
            continue
        lines = [json.loads(x) for x in open(f"{d}/result.json").read().splitlines() if x.strip()]
        trials[name_of(p)] = lines
    fig, axes = plt.subplots(1, len(trials), figsize=(4 * len(trials), 3.4), sharey=True, squeeze=False)
    for ax, (n, lines) in zip(axes[0], sorted(trials.items())):
        cls = sorted(k[8:] for k in lines[-1] if k.startswith("weights/"))
        steps = [m["step"] for m in lines]
        for i, c in enumerate(cls):
            ax.plot(steps, [m[f"weights/{c}"] for m in lines], marker="o", label=c, color=plt.cm.tab20(i))
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("class weight (seed 0)")
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="benchmarks/results/issue20/camvid_online", help="folder of the issue-20 trials")
    p.add_argument("--baselines", default="benchmarks/results/issue9", help="issue 9's kept trials")
    p.add_argument("--plot", default=None, help="write the weights' trajectories (seed 0) to this PNG")
    p.add_argument("--alone", action="store_true", help="every row (baselines too) from --root, none from --baselines")
    p.add_argument("--synthetic", default=None, help="folder of the class-tilt trials of the synthetic study "
                   "(against issue 9's synthetic baselines)")
    args = p.parse_args(argv)
    if args.synthetic:
        return main_synthetic(args)
    if args.alone:
        return main_alone(args)
    b = args.baselines
    r3 = a9.load([f"{b}/camvid_r3", f"{b}/camvid_r3b", f"{b}/camvid_r3d"], 1200)
    pilot = a9.load([f"{b}/pilot", f"{b}/pilot_b", f"{b}/pilot_c", f"{b}/pilot_d"], 1200)
    names_r3 = {r["name"] for r in r3}
    rows = [r for r in r3 if r["name"] != "MCCE"] + [r for r in pilot if r["name"] == "MCCE" or r["name"] not in names_r3]
    rows = [r for r in rows if r["name"] in BASELINES]
    new = load_new(args.root)
    new_names = sorted({r["name"] for r in new})
    print("### CamVid: the class tilt on the loss (issue 20) against the baselines\n")
    rows = summarise_all(rows + new, BASELINES + new_names)
    a9.versus(rows, [(n, ref) for n in new_names for ref in ("Lovász", "class-balanced CE")])
    by = sorted(rows[0]["u"], key=lambda c: np.mean([r["u"][c] for r in rows if r["name"] == "MCCE"]))
    bottom = by[:round(len(by) / 4)]
    roots = [f"{b}/{x}" for x in ("camvid_r3", "camvid_r3b", "camvid_r3d", "pilot", "pilot_b", "pilot_c", "pilot_d")]
    print_steps(history(roots + [args.root], set(BASELINES + new_names), bottom), BASELINES + new_names)
    print("\nSeeds of the new rows: " + "; ".join(f"{n}: {sorted(r['seed'] for r in new if r['name'] == n)}" for n in new_names))
    if args.plot:
        plot_weights(args.root, args.plot)
        print(f"\nweights' trajectories: {args.plot}")
    return 0


def main_alone(args) -> int:
    """The tables for a study that ran its baselines beside the class tilt (the full-resolution run)."""
    rows = load_new(args.root)
    names = [n for n in BASELINES if any(r["name"] == n for r in rows)]
    names += sorted({r["name"] for r in rows} - set(names))
    print(f"### {args.root}: every configuration against MCCE\n")
    rows = summarise_all(rows, names)
    new = [n for n in names if n.startswith("CT-")]
    refs = [n for n in names if n not in new and n != "MCCE"]
    a9.versus(rows, [(n, ref) for n in new for ref in refs])
    by = sorted(rows[0]["u"], key=lambda c: np.mean([r["u"][c] for r in rows if r["name"] == "MCCE"]))
    print_steps(history([args.root], set(names), by[:round(len(by) / 4)]), names)
    print("\nSeeds: " + "; ".join(f"{n}: {sorted(r['seed'] for r in rows if r['name'] == n)}" for n in names))
    if args.plot:
        plot_weights(args.root, args.plot)
        print(f"\nweights' trajectories: {args.plot}")
    return 0


SYN_BASELINES = ["MCCE", "sTCE t=1 batch (paper sampling)", "class-level TCE t=1", "class-balanced CE",
                 "CE median-freq weights", "Dice + CE", "Lovász"]


def main_synthetic(args) -> int:
    """The synthetic study's class-tilt trials (1,000 steps) beside issue 9's synthetic baselines."""
    roots = [f"{args.baselines}/{x}" for x in ("synthetic_r3", "synthetic_r3c", "synthetic_r3d")]
    base = [r for r in a9.load(roots, 1000) if r["name"] in SYN_BASELINES]
    new = load_new(args.synthetic, 1000)
    new_names = sorted({r["name"] for r in new})
    print("### Synthetic: the class tilt on the loss against issue 9's baselines\n")
    rows = summarise_all(base + new, SYN_BASELINES + new_names)
    a9.versus(rows, [(n, ref) for n in new_names for ref in ("class-balanced CE", "Lovász", "CE median-freq weights")])
    by = sorted(rows[0]["u"], key=lambda c: np.mean([r["u"][c] for r in rows if r["name"] == "MCCE"]))
    print_steps(history(roots + [args.synthetic], set(SYN_BASELINES + new_names), by[:round(len(by) / 4)], 1000),
                SYN_BASELINES + new_names)
    print("\nSeeds of the new rows: " + "; ".join(f"{n}: {sorted(r['seed'] for r in new if r['name'] == n)}" for n in new_names))
    return 0


def summarise_all(rows, order):
    return a9.summarise(rows, order=[o for o in order if any(r["name"] == o for r in rows)])


if __name__ == "__main__":
    raise SystemExit(main())
