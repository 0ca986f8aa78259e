"""The Assistants API: routes (routes.py), its state machine over the run model (runs.py), and
its implementation of the core's interface (api.py)."""

from .api import AssistantsApi

API = AssistantsApi()

__all__ = ["API", "AssistantsApi"]
