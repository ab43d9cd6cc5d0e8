"""The papers' tables, rerun: ``deephash-experiment ablation|multitask`` (see :mod:`.run`)."""
from .budgets import BUDGETS, Budget, get_budget
from .plan import BITS, EXPERIMENTS, Arm, arms_for
from .publish import update_readme, write_cards, write_outputs
from .report import claims, render_markdown, summarize
from .run import KEEP_CHOICES, SCHEMA_VERSION, experiment_key, run_experiment

__all__ = ['BUDGETS', 'Budget', 'get_budget', 'BITS', 'EXPERIMENTS', 'Arm', 'arms_for', 'update_readme',
           'write_cards', 'write_outputs', 'claims', 'render_markdown', 'summarize', 'KEEP_CHOICES',
           'SCHEMA_VERSION', 'experiment_key', 'run_experiment']
