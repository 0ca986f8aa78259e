"""The Responses API (and Conversations): routes (routes.py), what it records (states.py), its
stitcher of responses into turns (stitch.py), and its implementation of the core's interface (api.py)."""

from .api import ResponsesApi

API = ResponsesApi()

__all__ = ["API", "ResponsesApi"]
