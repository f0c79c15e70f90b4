"""The Hydra config tree, installed as the package ``eupe_drive_configs`` (see ``eupe.config_tree``)."""
