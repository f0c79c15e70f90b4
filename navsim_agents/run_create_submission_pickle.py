"""Write the NAVSIM leaderboard's submission pickle for any agent (navsim `run_create_submission_pickle.py`).

    python navsim_agents/run_create_submission_pickle.py agent=constant_velocity split=navhard_two_stage \
        split.devkit_config=.../train_test_split/warmup_two_stage.yaml team_name=T authors=A email=E \
        institution=I country=C

Stage one: the split's original tokens; stage two: its reactive synthetic tokens. As in the devkit, the agent may
not need the annotated scene, and a token whose trajectory fails is left out of the pickle (with a warning).
Score the file offline with `run_pdm_score.py agent=submission agent.path=<pickle>`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eupe.config_tree import hydra_config_path

logger = logging.getLogger("run_create_submission_pickle")


def create_submission(cfg: DictConfig) -> Path:
    """Run the agent on both stages of the split and write the pickle; returns its path."""
    from tqdm import tqdm

    from navsim_agents.data.splits import build_two_stage_loader
    from navsim_agents.run_pdm_score import _make_agent, _trajectory_fn
    from navsim_agents.submission import write_submission

    agent = _make_agent(cfg)
    if getattr(agent, "requires_scene", False):
        raise ValueError(f"{agent.name()} needs the annotated scene, which the test server does not give: only agents "
                         "with requires_scene=False can make a submission")
    loader = build_two_stage_loader(cfg.split, agent.get_sensor_config())
    stages = []
    for name, tokens in (("stage one", loader.tokens_stage_one), ("stage two", loader.reactive_tokens_stage_two)):
        out = {}
        for token in tqdm(tokens, desc=name, disable=not cfg.progress):
            try:
                out[token] = _trajectory_fn(agent, loader, token, cfg)().poses
            except Exception as err:  # noqa: BLE001 - the devkit skips a failing token and goes on
                logger.warning("token %s left out of the submission: %s: %s", token, type(err).__name__, err)
        stages.append(out)
    team = {"team_name": cfg.team_name, "authors": cfg.authors, "email": cfg.email, "institution": cfg.institution,
            "country / region": cfg.country}
    path = write_submission(cfg.output_path, stages[0], stages[1], team,
                            interval_length=float(agent._trajectory_sampling.interval_length))
    print(f"submission: {path} ({len(stages[0])} stage-one, {len(stages[1])} stage-two trajectories)")
    return path


@hydra.main(config_path=hydra_config_path(), config_name="run_create_submission_pickle", version_base=None)
def main(cfg: DictConfig) -> None:
    create_submission(cfg)


if __name__ == "__main__":
    main()
