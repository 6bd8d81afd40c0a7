"""homecloud: the data model, layers and controller-side helpers of the deploy."""

from pathlib import Path

# The clone homecloud runs from (its deploys, group_data, kubernetes modules, .secrets).
REPO_ROOT = Path(__file__).resolve().parent.parent
