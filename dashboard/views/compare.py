"""Compare: experiments side by side. Accuracy per round and per turn with 95% bootstrap intervals over
problems, paired differences against a baseline experiment, and the Best-of-n scaling curve computed from the
stored first-turn candidates (no new sampling). ``?experiments=a,b&dataset=mbpp`` preselects experiments and
the dataset."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import common as c
from dashboard.common import q

st.title("Compare")
exps = q("dash_experiments")
if not exps:
    st.info(c.EMPTY_HINT)
    c.footer()
    st.stop()

names = [e["name"] for e in exps]
wanted = [n for n in (st.query_params.get("experiments") or "").split(",") if n in names]
if "cmp_experiments" not in st.session_state or (wanted and st.session_state.get("_cmp_from_url") != wanted):
    current = next((e["name"] for e in exps if e["id"] == c.current_experiment()), names[0])
    st.session_state["cmp_experiments"] = wanted or (names if len(names) <= 4 else [current])
    st.session_state["_cmp_from_url"] = wanted
chosen = st.multiselect("Experiments", names, key="cmp_experiments",
                        help="Newest first. Each experiment's evaluations of the chosen dataset and setting.")
evals = [e for e in exps if e["name"] in chosen]
evals = [ev for e in evals for ev in q("dash_evaluations", e["id"])]
if not chosen or not evals:
    st.info("Choose experiments with evaluations: the round's `evaluate` step (or `mucode eval`) writes them.")
    c.footer()
    st.stop()


def _where(e: dict) -> str:
    return e["dataset"] if e.get("split") in (None, "test") else f"{e['dataset']} ({e['split']})"


left, mid, right = st.columns(3)
# the dataset most of the chosen experiments were evaluated on comes first
datasets = sorted({_where(e) for e in evals},
                  key=lambda d: (-len({e["experiment"] for e in evals if _where(e) == d}), d))
wanted_ds = st.query_params.get("dataset")
if wanted_ds in datasets and st.session_state.get("_cmp_dataset_from_url") != wanted_ds:
    st.session_state["cmp_dataset"] = wanted_ds  # a link chose it (once: the user may change it afterwards)
    st.session_state["_cmp_dataset_from_url"] = wanted_ds
dataset = left.selectbox("Dataset", datasets, key="cmp_dataset")
settings = sorted({c.eval_setting(e) for e in evals if _where(e) == dataset},
                  key=lambda s: (not s.startswith("BoN"), s))  # Best-of-N first: it has the scaling curve
setting = mid.selectbox("Setting", settings, key="cmp_setting")
sel = [e for e in evals if _where(e) == dataset and c.eval_setting(e) == setting and e["round"] is not None]
max_turns = max(int(e["max_turns"] or 1) for e in sel) if sel else 1
turn = right.selectbox("Accuracy at turn", list(range(1, max_turns + 1)), index=max_turns - 1, key="cmp_turn",
                       help="True success at turn t: a chain counts when its first public pass (at a turn <= t) "
                            "also passes the private tests.")
if not sel:
    st.info("No evaluation of these experiments' rounds in this setting.")
    c.footer()
    st.stop()

scores = c.eval_problem_scores(sel)


# An experiment is one series; where a round evaluates two generators (the round's G_k and the G_k+1 it
# trained, under previous-round verifier pairing) they are two series of that experiment.
_per_round: dict[tuple, int] = {}
for _e in sel:
    _per_round[(_e["experiment"], _e["round"])] = _per_round.get((_e["experiment"], _e["round"]), 0) + 1
_split = {exp for (exp, _), k in _per_round.items() if k > 1}


def series(e: dict) -> str:
    if e["experiment"] not in _split:
        return e["experiment"]
    trained = e.get("generator_label") == f"G{int(e['round']) + 1}"
    return f"{e['experiment']} · {'trained generator (G k+1)' if trained else 'round generator (G k)'}"


def cell(e: dict, t: int) -> dict | None:
    per_problem = scores.get(e["id"])
    if not per_problem or t > int(e["max_turns"] or 1):
        return None
    values = [per_problem[p][t - 1] for p in sorted(per_problem)]
    version = f"{e['id']}@{e['finished_at']}" if e.get("status") == "done" and e.get("finished_at") else None
    iv = c.interval(values, None if version is None else ("eval", version, t))
    return {"series": series(e), "experiment": e["experiment"], "round": e["round"], "turn": t,
            "evaluation": e["name"], "pair": c.eval_pair(e), "accuracy": 100 * iv["estimate"], "low": 100 * iv["low"],
            "high": 100 * iv["high"], "problems": iv["n"]}


def band_chart(frame: pd.DataFrame, x: str, x_title: str) -> alt.LayerChart:
    base = alt.Chart(frame).encode(
        x=alt.X(f"{x}:Q", title=x_title, axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("series:N", title="experiment", scale=alt.Scale(scheme="category10")))
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("low:Q", title="true success (%)"), y2="high:Q")
    line = base.mark_line(point=True).encode(
        y="accuracy:Q",
        tooltip=["series", "evaluation", "pair", x, alt.Tooltip("accuracy:Q", format=".1f"),
                 alt.Tooltip("low:Q", format=".1f"), alt.Tooltip("high:Q", format=".1f"), "problems"])
    return (band + line).properties(height=300)


def fmt(r: pd.Series) -> str:
    return f"{r['accuracy']:.1f} [{r['low']:.1f}, {r['high']:.1f}]"


# -- accuracy per round -------------------------------------------------------------------------------------
st.header("Accuracy per round")
per_round = pd.DataFrame([x for e in sel if (x := cell(e, turn)) is not None])
if per_round.empty:
    st.info("No per-chain results stored for these evaluations yet.")
else:
    st.altair_chart(band_chart(per_round, "round", "round"))
    table = per_round.assign(cell=per_round.apply(fmt, axis=1)).pivot_table(
        index="round", columns="series", values="cell", aggfunc="first")
    st.dataframe(table.fillna("–"), key="cmp_round_table")
    st.caption(f"{dataset}, {setting}, true success at turn {turn} (%), with its 95% percentile-bootstrap interval "
               f"over problems ({c.DASH_RESAMPLES:,} resamples of the problems; each problem scores the share of "
               "its chains solved). Numbers from the stored per-chain evaluation results.")

# -- per turn -------------------------------------------------------------------------------------------------
st.header("Accuracy per turn")
rounds = sorted({e["round"] for e in sel})
rnd = st.selectbox("Round", rounds, index=len(rounds) - 1, key="cmp_round")
at_round = [e for e in sel if e["round"] == rnd]
per_turn = pd.DataFrame([x for e in at_round for t in range(1, int(e["max_turns"] or 1) + 1)
                         if (x := cell(e, t)) is not None])
if per_turn.empty:
    st.info("No per-chain results for this round.")
else:
    st.altair_chart(band_chart(per_turn, "turn", "turn"))
    st.caption("True success by turn t (cumulative), 95% intervals over problems.")

# -- paired differences ---------------------------------------------------------------------------------------
st.header("Paired differences")
series_names = sorted({series(e) for e in sel})
if len({e["experiment"] for e in sel}) < 2:
    st.info("Choose two or more experiments to compare them problem by problem.")
else:
    from app.stats import paired_bootstrap_ci

    base_name = st.selectbox("Baseline", series_names, key="cmp_baseline")
    base = {e["round"]: e for e in sel if series(e) == base_name}
    rows = []
    for e in sel:
        b = base.get(e["round"])
        if b is None or series(e) == base_name or e["id"] not in scores or b["id"] not in scores:
            continue
        if turn > int(e["max_turns"] or 1) or turn > int(b["max_turns"] or 1):
            continue
        a_s = {p: v[turn - 1] for p, v in scores[e["id"]].items()}
        b_s = {p: v[turn - 1] for p, v in scores[b["id"]].items()}
        d = paired_bootstrap_ci(a_s, b_s, resamples=c.DASH_RESAMPLES)
        rows.append({"round": e["round"], "series": series(e), "minus": base_name,
                     "difference (points)": f"{100 * d.estimate:+.1f}",
                     "95% interval": f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]",
                     "shared problems": d.n,
                     "verdict": "better" if d.low > 0 else ("worse" if d.high < 0 else "no clear difference")})
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="cmp_paired")
    else:
        st.info("No round where the baseline and another experiment were both evaluated in this setting.")
    st.caption(f"Each row minus the baseline at the same round, at turn {turn}: the mean over the problems both "
               "were evaluated on of the per-problem difference, with the 95% percentile-bootstrap interval of the "
               "paired differences (a resample draws problems, each bringing both scores).")

# -- Best-of-n scaling ----------------------------------------------------------------------------------------
st.header("Best-of-n scaling")
bon = [e for e in at_round if e["mode"] == "bon" and int(e["num_candidates"] or 1) > 1]
if not bon:
    st.info("The scaling curve needs a Best-of-N setting with N > 1: choose one above.")
else:
    from app.scaling import ESTIMATOR, SCALING_SELECTORS, scaling_curve
    from app.stats import bootstrap_ci

    def _curve_points(cands: list[dict], selector: str, max_n: int) -> tuple[list[dict], dict]:
        """The curve's points (n, accuracy and interval in %) and the problems left out, by reason."""
        curve = scaling_curve(cands, selector, max_n)
        points = []
        for n in range(1, max_n + 1) if curve.values else ():
            iv = bootstrap_ci(curve.at(n), resamples=c.DASH_RESAMPLES)
            points.append({"n": n, "accuracy": 100 * iv.estimate, "low": 100 * iv.low, "high": 100 * iv.high,
                           "problems": iv.n})
        return points, curve.skipped

    @st.cache_data(ttl=c.FINISHED_TTL_S, show_spinner=False, max_entries=500)
    def _curve(key: tuple, _cands: list[dict], selector: str, max_n: int) -> tuple[list[dict], dict]:
        return _curve_points(_cands, selector, max_n)  # a finished evaluation's curve, cached under key

    own = bon[0]["selector"] if bon[0]["selector"] in SCALING_SELECTORS else "pt+lv"
    sc = st.columns([3, 1])
    selectors = sc[0].multiselect("Selectors", list(SCALING_SELECTORS), default=[own, "random"], key="cmp_selectors",
                                  help="Each selector applied to the same stored candidates. pt+lv and lv need the "
                                       "evaluation's verifier scores; oracle picks by the private tests (an upper "
                                       "bound).")
    pooled = sc[1].checkbox("Extend to N × chains", key="cmp_extend",
                            help="The chains' first turns are independent draws from the same prompt, so the "
                                 "estimate extends up to all of them pooled.")
    rows = []
    notes = []
    for e in bon:
        version = f"{e['id']}@{e['finished_at']}" if e.get("status") == "done" and e.get("finished_at") else None
        cands = (c.q_finished("dash_bon_first_turn", version, e["id"]) if version
                 else q("dash_bon_first_turn", e["id"]))
        big_n = int(e["num_candidates"])
        max_n = big_n * int(e["num_chains"] or 1) if pooled else big_n
        for selector in selectors:
            points, skipped = (_curve((c.database_url(), version, selector, max_n), cands, selector, max_n)
                               if version else _curve_points(cands, selector, max_n))
            if skipped:
                notes.append(f"{series(e)}, {selector}: problems left out: " + ", ".join(
                    f"{k}: {v}" for k, v in sorted(skipped.items())))
            rows += [{**p, "series": series(e), "selector": selector, "evaluation": e["name"], "sampled N": big_n}
                     for p in points]
    if not rows:
        st.info("No first-turn candidates of these evaluations are stored with their verdicts (and scores).")
    else:
        sf = pd.DataFrame(rows)
        base = alt.Chart(sf).encode(
            x=alt.X("n:Q", title="n (candidates picked from)", axis=alt.Axis(tickMinStep=1, format="d")),
            color=alt.Color("series:N", title="experiment", scale=alt.Scale(scheme="category10")),
            strokeDash=alt.StrokeDash("selector:N", title="selector"))
        band = base.mark_area(opacity=0.12).encode(y=alt.Y("low:Q", title="first-turn true success (%)"),
                                                   y2="high:Q", detail="selector:N")
        line = base.mark_line(point=True).encode(
            y="accuracy:Q",
            tooltip=["series", "selector", "n", alt.Tooltip("accuracy:Q", format=".1f"),
                     alt.Tooltip("low:Q", format=".1f"), alt.Tooltip("high:Q", format=".1f"), "problems"])
        rule = alt.Chart(pd.DataFrame({"n": sorted({int(e["num_candidates"]) for e in bon})})).mark_rule(
            strokeDash=[2, 2], color="gray").encode(x="n:Q")
        st.altair_chart((band + line + rule).properties(height=320))
        table = sf.assign(cell=sf.apply(fmt, axis=1)).pivot_table(
            index="n", columns=["series", "selector"], values="cell", aggfunc="first")
        table.columns = [" · ".join(col) for col in table.columns]
        st.dataframe(table.fillna("–"), key="cmp_scaling_table")
        st.caption(
            f"Round {rnd}. **Estimator**: {ESTIMATOR}. For each problem, the first-turn candidates of all its chains "
            "(independent draws from the same prompt) are ranked by the selector; the candidate at position j of M "
            "is the pick of C(M−j, n−1) of the C(M, n) subsets of size n, so the expected success of a pick among "
            "n candidates is exact, with no resampling noise; ties (equal preference) count as resolved at random, "
            "which is what the selector's lowest-sample-index rule does to independent draws. A pick counts when it "
            "passes the public and the private tests (true success at turn 1). The intervals are 95% bootstrap "
            "intervals over problems. **Exact (unbiased) for the first turn only**, and so for single-turn "
            "Best-of-n: later turns were sampled from the states the N-candidate picks led to, so they say "
            "nothing unbiased about a search with fewer candidates. The dotted rule marks the N the evaluation "
            "sampled.")
    for note in dict.fromkeys(notes):
        st.caption(note)

c.footer()
