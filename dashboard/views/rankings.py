"""Rankings: per problem, candidates ranked by a verifier's score with their labels; verifier metrics per
version (stored AUC / pair accuracy / calibration and the same measured live from the store); the relabeled
target of each state. ``?problem=mbpp/601`` opens a problem directly."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import common as c
from dashboard.common import df, q

st.title("Rankings")
params = st.query_params

# -- problem ------------------------------------------------------------------------------------------
left, right = st.columns([3, 1])
search = left.text_input("Find a problem", key="rank_search", placeholder="id or text")
total = q("dash_count_problems", search, with_rollouts=True)
off = c.pager("rank_problem_page", total, c.PAGE_SIZE)
found = q("dash_search_problems", search, with_rollouts=True, limit=c.PAGE_SIZE, offset=off)
options = [p["external_id"] for p in found]
wanted = params.get("problem")
if wanted and wanted not in options:
    options.insert(0, wanted)

verifiers = q("dash_verifiers")

if not options:
    st.info("No problems with rollouts yet. " + c.EMPTY_HINT)
else:
    if st.session_state.get("rank_problem") not in options:
        st.session_state["rank_problem"] = wanted if wanted in options else options[0]
    ext = right.selectbox("Problem", options, key="rank_problem")
    if ext != wanted:
        st.query_params["problem"] = ext
    problem = q("dash_problem", ext)
    if problem is None:
        st.error(f"Problem `{ext}` is not in the store.")
    else:
        st.header(f"{ext}: candidates ranked by verifier score")
        st.caption(problem["prompt"][:300])
        pv = q("dash_problem_verifiers", problem["id"])
        if not pv:
            st.info("No candidate of this problem has a verifier score yet (the round's `score` step writes them).")
        else:
            v_names = {v["id"]: f"{v['name']} ({v['scored']} scored)" for v in pv}
            vid = st.selectbox("Verifier", list(v_names), format_func=v_names.get, key="rank_verifier")
            n_scored = next(v["scored"] for v in pv if v["id"] == vid)
            r_off = c.pager("rank_page", n_scored, 50)
            ranking = q("dash_problem_ranking", problem["id"], vid, limit=50, offset=r_off)
            rf = df(ranking)
            correct = rf[rf["private_passed"].eq(True)]
            m = st.columns(4)
            m[0].metric("Scored candidates", n_scored)
            m[1].metric("Correct (oracle) on this page", len(correct))
            best = correct["rank"].min() if not correct.empty else None
            m[2].metric("Rank of best correct", "–" if best is None else int(best))
            m[3].metric("Incorrect above it", "–" if correct.empty else int(correct.iloc[0]["wrong_above"] or 0))
            rf["from"] = rf.apply(lambda r: f"round {r['round']}" if pd.notna(r["round_id"])
                                  else f"eval {r['evaluation']}", axis=1)
            rf["label"] = rf["private_passed"].map({True: "correct", False: "incorrect"}).fillna("not executed")
            ch = (alt.Chart(rf).mark_circle(size=80)
                  .encode(x=alt.X("rank:Q", axis=alt.Axis(tickMinStep=1, format="d")), y=alt.Y("score:Q"),
                          color=alt.Color("label:N", scale=alt.Scale(domain=["correct", "incorrect", "not executed"],
                                                                     range=["#2ca02c", "#d62728", "#999999"])),
                          tooltip=["rank", "score", "label", "from", "turn", "candidate_id"])
                  .properties(height=220))
            st.altair_chart(ch)
            show = pd.DataFrame({
                "rank": rf["rank"], "score": rf["score"].round(4), "private": rf["private_passed"].map(c.mark),
                "public": rf["public_passed"].map(c.mark), "chosen": rf["chosen"].map(lambda v: "✔" if v else ""),
                "from": rf["from"], "rollout": rf["rollout_id"], "turn": rf["turn"], "n": rf["sample_index"],
                "code": rf["code"].str.replace("\n", " ↵ ", regex=False).str.slice(0, 120),
            })
            st.dataframe(show, hide_index=True, key="ranking")
            top = ranking[0] if ranking else None
            if top:
                c.link("trajectories", f"Open the top-ranked candidate (rollout #{top['rollout_id']}, turn "
                       f"{top['turn']}) →", problem=ext, rollout=top["rollout_id"], turn=top["turn"])

        # -- relabeled targets ------------------------------------------------------------------------
        st.header(f"{ext}: relabeled targets")
        targets = q("dash_relabel_targets", problem["id"], limit=100)
        if not targets:
            st.info("No SFT examples for this problem yet (the round's `relabel` step writes them).")
        else:
            tf = pd.DataFrame([{
                "example": t["id"], "training set": t["training_set"], "rollout": t["rollout_id"],
                "state (turn)": t["turn_index"], "rollout label": c.mark(t["rollout_label"]),
                "source": t["source"], "target": f"#{t['target_candidate_id']} (rollout {t['target_rollout_id']}, "
                                                 f"turn {t['target_turn']})",
                "target label": c.mark(t["target_label"]), "target score": t["target_score"],
                "verifier": t["verifier"],
            } for t in targets])
            st.dataframe(tf, hide_index=True, key="targets")
            st.caption("Each state = a rollout's history before turn t; the target is the expert answer y* "
                       "(the highest R(x, y) + 100·label final-turn response of the problem), or the trajectory's "
                       "own answer for successful ones.")
            ex_ids = [t["id"] for t in targets]
            ex_id = st.selectbox("Show example", ex_ids, key="rank_example",
                                 format_func=lambda i: next(f"#{t['id']} · rollout {t['rollout_id']} · state "
                                                            f"{t['turn_index']} · {t['source']}"
                                                            for t in targets if t["id"] == i))
            ex = q("dash_sft_state", ex_id)
            if ex:
                sc = st.columns(2)
                with sc[0]:
                    st.markdown("**State (what the model sees)**")
                    for msg in ex["messages"] or []:
                        st.caption(msg.get("role", "?"))
                        st.code(msg.get("content", ""), language=None, wrap_lines=True)
                with sc[1]:
                    st.markdown(f"**Target** (label {c.mark(ex['target_label'])})")
                    st.code(ex["target_code"], language="python")

# -- verifier metrics ---------------------------------------------------------------------------------
st.header("Verifier metrics per version")
if not verifiers:
    st.info("No verifier trained yet (the round's `train_verifier` step registers one).")
else:
    rows = []
    for v in verifiers:
        parts = c.metric_parts(v["metrics"])
        for part, mm in parts.items():
            rows.append({
                "verifier": v["name"], "round": v["round"], "scored": v["scored"], "measured on": part,
                "AUC": c.find_metric(mm, ("roc_auc", "auc", "AUC")),
                "pair accuracy": c.find_metric(mm, ("pair_accuracy", "pair_acc", "pairwise_accuracy")),
                "BoN accuracy": c.find_metric(mm, ("bon_accuracy",)),
                "random pick": c.find_metric(mm, ("bon_random_baseline",)),
                "oracle": c.find_metric(mm, ("bon_oracle_rate",)),
                "ECE": c.find_metric(mm, ("ece", "expected_calibration_error")),
                "problems": c.find_metric(mm, ("problems",)),
            })
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="verifier_metrics")
    st.caption("As the trainer stored them in `model_versions.metrics`: on held-out training problems and on the "
               "MBPP-test Best-of-N turns. BoN accuracy = the top-scored candidate of a group is correct; random "
               "pick and oracle bound it from below and above.")

    names = {v["id"]: v["name"] for v in verifiers}
    vsel = st.selectbox("Check one version against the oracle, live", list(names), index=len(names) - 1,
                        format_func=names.get, key="calib_verifier")
    v = next(x for x in verifiers if x["id"] == vsel)
    agree = q("dash_verifier_agreement", None, vsel)
    cal = q("dash_verifier_calibration", vsel)
    if not cal:
        st.info("This verifier has not scored any executed candidate yet.")
    else:
        pairs = sum(a["pairs"] or 0 for a in agree)
        right = sum(a["pairs_right"] or 0 for a in agree)
        solvable = sum(a["solvable"] or 0 for a in agree)
        misses = sum(a["top1_misses"] or 0 for a in agree)
        mc = st.columns(4)
        mc[0].metric("Scored & executed", f"{cal[0]['total']:,}")
        mc[1].metric("Pooled AUC", "–" if cal[0]["auc"] is None else f"{cal[0]['auc']:.3f}")
        mc[2].metric("Pair accuracy within problem", c.pct(right / pairs) if pairs else "–")
        mc[3].metric("Top-1 miss", c.pct(misses / solvable) if solvable else "–")
        st.caption("Live = measured now from this version's scores and the oracle labels of every candidate it "
                   "scored. Pair accuracy: (correct, incorrect) pairs of the same problem ordered right (ties half). "
                   "Top-1 miss: problems with a correct candidate whose top-scored candidate is wrong.")
    cc = st.columns(2)
    stored, stored_on = None, None
    for part, mm in c.metric_parts(v["metrics"]).items():
        found = c.find_key(mm, ("calibration", "reliability"))
        if found:
            stored, stored_on = found, part
            break
    with cc[0]:
        st.markdown("**Stored calibration**" + (f" ({stored_on}, sigmoid of the score)" if stored_on else ""))
        sf = pd.DataFrame(stored) if isinstance(stored, list) and stored and isinstance(stored[0], dict) else None
        xcol = next((k for k in ("mean_predicted", "predicted", "confidence", "mean_score", "prob")
                     if sf is not None and k in sf), None)
        ycol = next((k for k in ("observed", "accuracy", "fraction_positive", "empirical")
                     if sf is not None and k in sf), None)
        if sf is not None and xcol and ycol:
            diag = pd.DataFrame({xcol: [0.0, 1.0], ycol: [0.0, 1.0]})
            st.altair_chart(alt.Chart(diag).mark_line(strokeDash=[4, 4], color="gray").encode(x=xcol, y=ycol)
                            + alt.Chart(sf).mark_line(point=True).encode(x=alt.X(f"{xcol}:Q", title="predicted"),
                                                                          y=alt.Y(f"{ycol}:Q", title="observed"))
                            .properties(height=220))
        elif stored:
            st.json(stored)
        else:
            st.info("The trainer stored no calibration for this version.")
    with cc[1]:
        st.markdown("**Live: share correct by score decile**")
        if cal:
            cf = df(cal)
            st.altair_chart(alt.Chart(cf).mark_bar().encode(
                x=alt.X("bin:O", title="score decile (low → high)", axis=alt.Axis(labelAngle=0)),
                y=alt.Y("observed:Q", title="share correct", scale=alt.Scale(domain=[0, 1])),
                tooltip=["bin", "candidates", alt.Tooltip("mean_score:Q", format=".3f"),
                         alt.Tooltip("observed:Q", format=".3f")]).properties(height=220))

# -- calibration and ROC per round -------------------------------------------------------------------------
st.header("Calibration and ROC per round")
if verifiers:
    from app.calibration import verifier_curves

    exp_name = next((e["name"] for e in q("dash_experiments") if e["id"] == c.current_experiment()), None)
    mine = [v for v in verifiers if v["round"] is not None and (exp_name is None or v["experiment"] == exp_name)]
    window = c.ROUND_WINDOWS.get(st.session_state.get("rounds_window", "last 5 rounds"), 5)
    if window is not None and mine:
        last = {}
        for v in mine:
            last[v["experiment"]] = max(last.get(v["experiment"], -1), v["round"])
        mine = [v for v in mine if v["round"] > last[v["experiment"]] - window]
    sources = {"all scored candidates": None, "evaluation chains (test problems)": "eval",
               "training rollouts": "train"}
    vc = st.columns([2, 3])
    source = vc[0].radio("Measured on", list(sources), key="calib_source",
                         help="Evaluation chains are problems no verifier was trained on.")
    labels = {v["id"]: (f"{v['experiment']} · " if exp_name is None else "") + f"round {v['round']} · {v['name']}"
              for v in mine}
    # each verifier scans every candidate it scored: the three most recent by default
    picked = vc[1].multiselect("Verifiers", list(labels), default=list(labels)[-3:], format_func=labels.get,
                               key="calib_verifiers", help="The rounds in the sidebar's window.")
    roc_rows, rel_rows, summary = [], [], []
    for v in [v for v in mine if v["id"] in picked]:
        label = labels[v["id"]]
        # one query per verifier, so each is cached on its own
        curves = verifier_curves(q("dash_verifier_curves", (v["id"],), source=sources[source], points=100,
                                   bins=10), 10).get(v["id"])
        if curves is None:
            continue
        auc_v, rel = curves["auc"], curves["reliability"]
        summary.append({"verifier": v["name"], "round": v["round"], "candidates": curves["candidates"],
                        "correct": curves["correct"],
                        "exact AUC": None if auc_v is None else round(auc_v, 3),
                        "ECE (10 bins)": None if rel["ece"] is None else round(rel["ece"], 3)})
        name = f"{label} (AUC {auc_v:.3f})" if auc_v is not None else label
        roc_rows += [{**p, "verifier": name, "order": i} for i, p in enumerate(curves["roc"])]
        rel_rows += [{**p, "verifier": label} for p in rel["points"]]
    if not summary:
        st.info("No verifier of these rounds has scored an executed candidate here yet.")
    else:
        st.dataframe(pd.DataFrame(summary), hide_index=True, key="calib_summary")
        diag = alt.Chart(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).mark_line(
            strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
        gc = st.columns(2)
        with gc[0]:
            st.markdown("**Reliability diagram**")
            rf = pd.DataFrame(rel_rows)
            st.altair_chart((diag + alt.Chart(rf).mark_line(point=True).encode(
                x=alt.X("predicted:Q", title="predicted probability, sigmoid(score)", scale=alt.Scale(domain=[0, 1])),
                y=alt.Y("observed:Q", title="observed private pass rate", scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("verifier:N", title="verifier", scale=alt.Scale(scheme="category10")),
                tooltip=["verifier", "bin", "candidates", alt.Tooltip("predicted:Q", format=".3f"),
                         alt.Tooltip("observed:Q", format=".3f")])).properties(height=300))
        with gc[1]:
            st.markdown("**ROC**")
            cf = pd.DataFrame(roc_rows).drop(columns=["threshold"])
            st.altair_chart((diag + alt.Chart(cf).mark_line().encode(
                x=alt.X("fpr:Q", title="false-positive rate"), y=alt.Y("tpr:Q", title="true-positive rate"),
                order="order:Q",
                color=alt.Color("verifier:N", title="verifier (AUC)", scale=alt.Scale(scheme="category10")),
                tooltip=["verifier", alt.Tooltip("fpr:Q", format=".3f"), alt.Tooltip("tpr:Q", format=".3f")]))
                .properties(height=300))
        st.caption("Each round's verifier on the candidates it scored, against the oracle label (the private "
                   "tests). Reliability: candidates in ten equal-width bins of sigmoid(score), the mean predicted "
                   "probability against the observed pass rate (on the diagonal = calibrated); ECE is the "
                   "candidate-weighted mean gap. ROC: thresholds at 100 score quantiles; AUC is exact (the "
                   "Mann-Whitney statistic over all candidates, ties half). The verifiers to pick from are those of "
                   "the rounds in the sidebar's window; the three most recent are shown by default.")
else:
    st.info("No verifier trained yet.")

c.footer()
