"""An experiment's results as Markdown."""

from __future__ import annotations


def markdown(results: dict) -> str:
    """The results as Markdown: per panel, test error by N for every curve, then savings."""
    out = []
    for panel in results["panels"]:
        ns = sorted({p["n"] for c in panel["curves"] for p in c["points"]})
        out += [f"**{panel['title']}**", ""]
        out.append("| curve | " + " | ".join(f"N={n}" for n in ns) + " |")
        out.append("| --- |" + " --- |" * len(ns))
        for curve in panel["curves"]:
            by_n = {p["n"]: p["error"] for p in curve["points"]}
            cells = [f"{by_n[n]:.3f}" if n in by_n else "" for n in ns]
            out.append(f"| {curve['label']} | " + " | ".join(cells) + " |")
        saved = [s for s in panel["savings"] if s["n"] > 0]
        for label in dict.fromkeys(s["curve"] for s in saved):
            text = ", ".join(
                f"N={s['n']}: "
                + (
                    f"{s['scratch_equivalent']:.0f}"
                    if s["scratch_equivalent"]
                    else f"> {s['largest_scratch_n']} (TL beats every scratch run)"
                    if s["beats_scratch"]
                    else "n/a"
                )
                for s in saved
                if s["curve"] == label
            )
            out += ["", f"From-scratch examples reaching the error of {label}: {text}"]
        out.append("")
    return "\n".join(out)
