"""Two-stage scene aggregator on hand-built rows: Gaussian weights, fallbacks, comfort pairing, stage1 x stage2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navsim_agents.scoring import two_stage as T
from navsim_agents.scoring.constants import V2_COLUMNS


def test_weights_from_known_distances():
    # sigma^2 = 0.1: exp(-d^2 / 0.2); distances 0, 0.2, 0.4 from the endpoint
    w = T.pseudo_closed_loop_weights([10.0, 5.0], np.array([[10.0, 5.0], [10.2, 5.0], [10.0, 5.4]]))
    raw = np.array([1.0, math.exp(-0.04 / 0.2), math.exp(-0.16 / 0.2)])
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-12)
    assert w.argmax() == 0 and w.sum() == pytest.approx(1.0)


def test_all_far_starts_fall_back_to_uniform():
    # exp(-100 / 0.2) underflows to 0: the devkit's np.isclose(sum, 0) branch gives 1/K
    w = T.pseudo_closed_loop_weights([0.0, 0.0], np.array([[10.0, 0.0], [0.0, 20.0], [-30.0, 0.0], [0.0, -40.0]]))
    np.testing.assert_array_equal(w, np.full(4, 0.25))


def _row(token: str, score_terms: dict, start_time: float, endpoint=(0.0, 0.0), start=(0.0, 0.0), speed=5.0,
         accel=0.0):
    """A valid row whose simulated states move straight at `speed` with constant `accel` (41 states, 0.1 s)."""
    t = np.arange(41) * 0.1
    states = np.zeros((41, 11))
    states[:, 0] = speed * t + 0.5 * accel * t**2
    states[:, 3] = speed + accel * t
    states[:, 5] = accel
    row = {"token": token, "valid": True, "_states": states, "_start_time": start_time,
           "_endpoint": list(endpoint), "_start_point": list(start)}
    row.update({c: 1.0 for c in V2_COLUMNS})
    row.update(score_terms)
    row["_multi"] = (row["no_at_fault_collisions"] * row["drivable_area_compliance"]
                     * row["driving_direction_compliance"] * row["traffic_light_compliance"])
    row["_weighted"] = np.array([row["ego_progress"], row["time_to_collision_within_bound"], row["lane_keeping"],
                                 row["history_comfort"], float("nan")])
    row["_weights"] = np.array([5.0, 5.0, 2.0, 2.0, 2.0])
    return row


def _scene(syn_now_nc=(1.0, 0.0), prev_accel=0.0):
    """Stage one: now (t=10.5) / prev (t=10.0), endpoints at x=20; stage two: two synthetic pairs, the first
    starting at the endpoint, the second 1 m off; the second synthetic now scene collides (NC = syn_now_nc[1])."""
    rows = {
        "now": _row("now", {"ego_progress": 0.8}, 10.5, endpoint=(20.0, 0.0)),
        "prev": _row("prev", {}, 10.0, endpoint=(20.0, 0.0)),
        "sn_a": _row("sn_a", {"no_at_fault_collisions": syn_now_nc[0]}, 14.5, start=(20.0, 0.0)),
        "sp_a": _row("sp_a", {}, 14.0, start=(20.0, 0.0), accel=prev_accel),
        "sn_b": _row("sn_b", {"no_at_fault_collisions": syn_now_nc[1]}, 14.5, start=(21.0, 0.0)),
        "sp_b": _row("sp_b", {}, 14.0, start=(21.0, 0.0)),
    }
    mapping = [("now", "prev", [("sn_a", "sp_a"), ("sn_b", "sp_b")])]
    return rows, mapping


def test_stage_one_times_weighted_stage_two():
    rows, mapping = _scene()
    agg = T.aggregate(rows, mapping)
    w_b = math.exp(-1.0 / 0.2) / (1.0 + math.exp(-1.0 / 0.2))
    assert agg.rows["now"]["weight"] == 1.0 and agg.rows["prev"]["weight"] == 1.0
    assert agg.rows["sn_b"]["weight"] == pytest.approx(w_b, rel=1e-12)
    assert agg.rows["sp_a"]["weight"] == pytest.approx(1 - w_b, rel=1e-12)
    # identical constant-speed states: every two-frame comfort pair passes
    assert all(r["two_frame_extended_comfort"] == 1.0 for r in agg.rows.values())
    # per-token EPDMS: now = (5*0.8 + 5 + 2 + 2 + 2) / 16; collided synthetic now = 0
    assert agg.rows["now"]["score"] == pytest.approx((4.0 + 11.0) / 16.0, rel=1e-12)
    assert agg.rows["sn_b"]["score"] == 0.0 and agg.rows["sn_a"]["score"] == 1.0
    s1_now, s1_prev = 15.0 / 16.0, 1.0
    s2_now, s2_prev = (1 - w_b) * 1.0 + w_b * 0.0, 1.0
    assert agg.final["score"] == pytest.approx((s1_now * s2_now + s1_prev * s2_prev) / 2, rel=1e-12)
    assert agg.stage_one["score"] == pytest.approx((s1_now + s1_prev) / 2, rel=1e-12)
    assert agg.stage_two["score"] == pytest.approx((s2_now + s2_prev) / 2, rel=1e-12)
    assert agg.stage_two["no_at_fault_collisions"] == pytest.approx((1 - w_b + 1.0) / 2, rel=1e-12)
    assert agg.invalid_entries == []


def test_two_frame_comfort_pairs_now_with_prev():
    # the first synthetic prev scene accelerates at 2 m/s^2: its pair (sn_a, sp_a) fails comfort (acceleration RMS
    # difference 2 > 0.7), both rows get 0; the other pairs keep 1
    rows, mapping = _scene(syn_now_nc=(1.0, 1.0), prev_accel=2.0)
    agg = T.aggregate(rows, mapping)
    ec = {t: r["two_frame_extended_comfort"] for t, r in agg.rows.items()}
    assert ec == {"now": 1.0, "prev": 1.0, "sn_a": 0.0, "sp_a": 0.0, "sn_b": 1.0, "sp_b": 1.0}
    assert agg.rows["sn_a"]["score"] == pytest.approx(14.0 / 16.0, rel=1e-12)


def test_pair_too_far_apart_is_rejected():
    rows, _ = _scene()
    rows["prev"]["_start_time"] = 9.0  # 1.5 s before now: the devkit asserts 0 < dt < 0.55
    with pytest.raises(ValueError, match="apart"):
        T.pair_comfort(rows["now"], rows["prev"])


def test_failed_token_marks_its_entry_invalid_and_leaves_the_rest():
    rows, mapping = _scene()
    other = {f"x_{k}": dict(v, token=f"x_{k}") for k, v in rows.items()}
    rows.update(other)
    mapping.append(("x_now", "x_prev", [("x_sn_a", "x_sp_a"), ("x_sn_b", "x_sp_b")]))
    reference = T.aggregate({k: v for k, v in rows.items() if not k.startswith("x_")}, mapping[:1])
    rows["x_sn_a"] = {"token": "x_sn_a", "valid": False, "_error": "boom"}
    agg = T.aggregate(rows, mapping)
    assert agg.invalid_entries == [("x_now", "x_prev")]
    assert agg.final["score"] == pytest.approx(reference.final["score"], rel=1e-12)
    synthetic = [t for t in rows if t.removeprefix("x_").startswith(("sn_", "sp_"))]
    df = T.results_dataframe(agg, list(rows), synthetic)
    aggregates = df[df["token"].isin(T.AGGREGATE_TOKENS)]
    assert not aggregates["valid"].any()
    assert not bool(df.loc[df["token"] == "x_sn_a", "valid"].item())


def test_csv_layout_matches_the_devkit():
    rows, mapping = _scene()
    agg = T.aggregate(rows, mapping)
    tokens = list(rows)
    df = T.results_dataframe(agg, tokens, ["sn_a", "sp_a", "sn_b", "sp_b"])
    assert list(df.columns) == (["token", "valid"] + [f"{c}_stage_one" for c in V2_COLUMNS]
                                + [f"{c}_stage_two" for c in V2_COLUMNS] + ["score"])
    assert list(df["token"][-3:]) == ["extended_pdm_score_stage_one", "extended_pdm_score_stage_two",
                                      "extended_pdm_score_combined"]
    now = df[df["token"] == "now"].iloc[0]
    assert now["ego_progress_stage_one"] == 0.8 and np.isnan(now["ego_progress_stage_two"])
    syn = df[df["token"] == "sn_b"].iloc[0]
    assert syn["no_at_fault_collisions_stage_two"] == 0.0 and np.isnan(syn["no_at_fault_collisions_stage_one"])
    combined = df[df["token"] == "extended_pdm_score_combined"].iloc[0]
    assert combined["score"] == pytest.approx(agg.final["score"], rel=1e-12)
    assert combined["ego_progress_stage_one"] == pytest.approx(agg.stage_one["ego_progress"], rel=1e-12)


def test_mapping_entries_without_known_tokens_are_skipped():
    raw = [["a", "b", [["c", "d"]]], ["x", "y", [["z", "w"]]]]
    assert T.read_mapping(raw, ["a", "b", "c", "d"]) == [("a", "b", [("c", "d")])]
