"""Chat Completions: routes (routes.py), its stitcher of completions into turns (stitch.py), and its
implementation of the core's interface (api.py)."""

from .api import ChatApi

API = ChatApi()

__all__ = ["API", "ChatApi"]
