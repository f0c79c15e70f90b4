"""The backbone-swap study: one command from training to the report (the top layer)."""
