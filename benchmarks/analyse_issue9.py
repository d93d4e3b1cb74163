"""The tables of benchmarks/RESULTS.md section 1 (issues 9 and 16), from the trials kept in
benchmarks/results/issue9/ (params.json + result.json of every trial used):

    python -m benchmarks.analyse_issue9            # CamVid and synthetic tables (markdown)
    python -m benchmarks.analyse_issue9 --root DIR # the same from another copy

Per-seed rows at the last step; per configuration: mean ± std over seeds, the difference
from MCCE with Welch's p (tce_ray.core.stats) and a 95 % bootstrap interval for the sorted
bottom 25 %. CamVid uses the pilot's seeds (branch rcs, reproduced by main, see RESULTS.md)
for MCCE and stochastic TCE t=1 class + power 1 + crop, whose round-3 seed-0 reruns are the
reproduction check; every other configuration uses the round-3 studies where they ran it.
"""
import argparse
import glob
import json
import sys

import numpy as np

from tce_ray.core.stats import compare

def final(d):
    L = [l for l in open(f"{d}/result.json").read().splitlines() if l.strip()]
    return json.loads(L[-1]) if L else None

def name_of(p):
    loss = dict(p["loss"]); s = dict(loss.pop("sampling", None) or p.get("sampling") or {})
    n = loss["name"]
    if n == "tce_stochastic":
        lab = f"sTCE t={loss.get('t', 1.0):g} {loss.get('tilt_signal', 'batch')}"
        if s.get("image_power") or s.get("class_crop"):
            lab += f", power {s.get('image_power', 0):g}" + (" + crop" if s.get("class_crop") else "")
        else:
            lab += " (paper sampling)"
        return lab
    base = {"mcce": "MCCE", "focal": "Focal", "ce_balanced": "class-balanced CE", "ce_weighted": "CE median-freq weights",
            "dice": "Dice + CE", "lovasz": "Lovász"}.get(n, n)
    if n in ("tce_class", "tce_image"):
        base = f"{'class' if n == 'tce_class' else 'image'}-level TCE t={loss.get('t', 1.0):g}"
    if s.get("mode") == "rare_class":
        base += f" + rare-class T={s.get('temperature', 0.01):g}, power {s.get('image_power', 0):g}" + (" + crop" if s.get("class_crop") else "")
    return base

def load(roots, steps):
    rows = []
    for r in roots:
        for d in sorted(glob.glob(f"{r}/trial_*")):
            try:
                last = final(d); p = json.load(open(f"{d}/params.json"))
            except (OSError, ValueError):
                continue
            if not last or last.get("step") != steps:
                continue
            cls = sorted(k[4:] for k in last if k.startswith("iou/"))
            u = {c: 100 * last[f"iou/{c}"] for c in cls}
            w = {c: last.get(f"weights/{c}") for c in cls}
            rows.append(dict(name=name_of(p), seed=p["study"]["seed"], src=r.split("/")[-1], u=u, w=w,
                             miss=last.get("drawn_class_missing")))
    return rows

def summarise(rows, order=None, ref="MCCE", bottom=None, out=sys.stdout):
    cls = list(rows[0]["u"])
    refr = [r for r in rows if r["name"] == ref]
    mean_ref = {c: np.mean([r["u"][c] for r in refr]) for c in cls}
    by = sorted(cls, key=lambda c: mean_ref[c])
    k = round(len(cls) / 4)
    bottom = bottom or by[:k]
    top = by[-k:]
    for r in rows:
        v = np.array([r["u"][c] for c in cls])
        r.update(miou=v.mean(), worst=v.min(), std=v.std(ddof=1), b25=np.mean([r["u"][c] for c in bottom]),
                 t25=np.mean([r["u"][c] for c in top]))
    names = order or sorted({r["name"] for r in rows})
    pr = lambda *a: print(*a, file=out)
    pr(f"sorted bottom 25% = {bottom} (lowest MCCE mean IoU); top 25% = {top}\n")
    pr("| configuration | n | mIoU | Δ mIoU (Welch p) | sorted bottom 25% | Δ bottom (p; 95% bootstrap CI) | worst | std | Δ std (p) | top 25% |")
    pr("|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        g = [r for r in rows if r["name"] == n]
        if not g:
            continue
        def ms(key):
            a = np.array([r[key] for r in g]); return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"
        if n == ref or len(g) < 2:
            pr(f"| {n} | {len(g)} | {ms('miou')} | – | {ms('b25')} | – | {ms('worst')} | {ms('std')} | – | {ms('t25')} |"); continue
        cm = compare([r["miou"] for r in g], [r["miou"] for r in refr])
        cb = compare([r["b25"] for r in g], [r["b25"] for r in refr])
        cs = compare([r["std"] for r in g], [r["std"] for r in refr])
        pr(f"| {n} | {len(g)} | {ms('miou')} | {cm.diff:+.2f} (p={cm.p_welch:.2g}) | {ms('b25')} | "
           f"{cb.diff:+.2f} (p={cb.p_welch:.2g}; [{cb.ci_low:.2f}, {cb.ci_high:.2f}]) | {ms('worst')} | {ms('std')} | {cs.diff:+.2f} (p={cs.p_welch:.2g}) | {ms('t25')} |")
    pr("\nPer-class IoU (%), mean over seeds, classes by MCCE mean IoU:\n")
    pr("| configuration | " + " | ".join(by) + " | drawn class missing | final weights (" + ", ".join(by[:3]) + ") |")
    pr("|" + "---|" * (len(by) + 3))
    for n in names:
        g = [r for r in rows if r["name"] == n]
        if not g:
            continue
        miss = [r["miss"] for r in g if r["miss"] is not None]
        ws = [r["w"] for r in g if r["w"].get(by[0]) is not None]
        wtxt = " / ".join(f"{np.mean([w[c] for w in ws]):.2f}" for c in by[:3]) if ws else "–"
        pr(f"| {n} | " + " | ".join(f"{np.mean([r['u'][c] for r in g]):.1f}" for c in by) +
           f" | {np.mean(miss):.3f} | {wtxt} |" if miss else f"| {n} | " + " | ".join(f"{np.mean([r['u'][c] for r in g]):.1f}" for c in by) + f" | – | {wtxt} |")
    return rows


def versus(rows, pairs, out=sys.stdout):
    """Head-to-head rows (after :func:`summarise` filled the criteria): A - B with Welch's p."""
    pr = lambda *a: print(*a, file=out)
    pr("\n| A vs B (A - B) | Δ mIoU (p) | Δ sorted bottom 25% (p) | Δ worst (p) | Δ std (p) |")
    pr("|---|---|---|---|---|")
    for a, b in pairs:
        ga, gb = [r for r in rows if r["name"] == a], [r for r in rows if r["name"] == b]
        if len(ga) < 2 or len(gb) < 2:
            continue
        cells = []
        for key in ("miou", "b25", "worst", "std"):
            c = compare([r[key] for r in ga], [r[key] for r in gb])
            cells.append(f"{c.diff:+.2f} (p={c.p_welch:.2g})")
        pr(f"| {a} vs {b} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="benchmarks/results/issue9", help="folder of the kept trials")
    root = p.parse_args(argv).root
    pilot = load([f"{root}/pilot", f"{root}/pilot_b", f"{root}/pilot_c", f"{root}/pilot_d"], 1200)
    r3 = load([f"{root}/camvid_r3", f"{root}/camvid_r3b", f"{root}/camvid_r3d"], 1200)
    repro = ("MCCE", "sTCE t=1 class, power 1 + crop")
    names_r3 = {r["name"] for r in r3}
    rows = [r for r in r3 if r["name"] not in repro] + [r for r in pilot if r["name"] not in names_r3 or r["name"] in repro]
    order = ["MCCE", "Focal", "class-level TCE t=1", "class-balanced CE", "CE median-freq weights", "Dice + CE", "Lovász",
             "sTCE t=1 batch (paper sampling)", "sTCE t=1 class (paper sampling)", "sTCE t=1 batch, power 1 + crop",
             "sTCE t=0.1 class, power 1 + crop", "sTCE t=1 class, power 1 + crop", "sTCE t=1 class, power 2 + crop",
             "MCCE + rare-class T=0.01, power 1 + crop", "MCCE + rare-class T=0.01, power 2 + crop"]
    print("### CamVid\n")
    print("Reproduction (round-3 rerun of a pilot trial, same seed):\n")
    for n in repro:
        a = [r for r in pilot if r["name"] == n and r["seed"] == 0]; b = [r for r in r3 if r["name"] == n and r["seed"] == 0]
        if a and b:
            da = np.array(list(a[0]["u"].values())); db = np.array(list(b[0]["u"].values()))
            print(f"- {n}, seed 0: mIoU {da.mean():.2f} (pilot) vs {db.mean():.2f} (main); largest per-class difference {np.abs(da-db).max():.2f} points")
    print()
    summarise(rows, order=[o for o in order if any(r["name"] == o for r in rows)])
    versus(rows, [("class-level TCE t=1", "class-balanced CE"), ("Lovász", "class-balanced CE"),
                  ("Dice + CE", "class-balanced CE"), ("Lovász", "Focal")])
    def _src(n):
        return ", ".join(sorted({"%s s%d" % (r["src"], r["seed"]) for r in rows if r["name"] == n}))
    print("\nSources (results folder, seed): " + "; ".join(n + ": " + _src(n) for n in order if any(r["name"] == n for r in rows)))
    syn = load([f"{root}/synthetic_r3", f"{root}/synthetic_r3c", f"{root}/synthetic_r3d"], 1000)
    if syn:
        print("\n### Synthetic\n")
        summarise(syn, order=["MCCE", "sTCE t=1 batch (paper sampling)", "class-level TCE t=1", "class-balanced CE", "CE median-freq weights", "Dice + CE", "Lovász"])
        versus(syn, [("class-level TCE t=1", "class-balanced CE"), ("Lovász", "class-balanced CE"), ("Dice + CE", "class-balanced CE")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
