"""The two colour palettes; plain tuples so the choice is testable and the KV rules just read ``app.c_*``."""

from __future__ import annotations

from clients.app.viewmodels.connection import LinkView

Colour = tuple[float, float, float, float]

PALETTES: dict[str, dict[str, Colour]] = {
    "dark": {
        "bg": (0.075, 0.082, 0.102, 1),
        "surface": (0.125, 0.137, 0.165, 1),
        "raised": (0.17, 0.184, 0.22, 1),
        "fg": (0.93, 0.94, 0.96, 1),
        "muted": (0.58, 0.62, 0.68, 1),
        "accent": (0.30, 0.55, 0.98, 1),
        "user": (0.19, 0.34, 0.62, 1),
        "bot": (0.16, 0.173, 0.21, 1),
        "ok": (0.30, 0.78, 0.47, 1),
        "warn": (0.96, 0.70, 0.22, 1),
        "danger": (0.87, 0.20, 0.20, 1),
        "input": (0.16, 0.173, 0.21, 1),
    },
    "light": {
        "bg": (0.96, 0.965, 0.975, 1),
        "surface": (1.0, 1.0, 1.0, 1),
        "raised": (0.90, 0.91, 0.93, 1),
        "fg": (0.10, 0.11, 0.13, 1),
        "muted": (0.42, 0.45, 0.50, 1),
        "accent": (0.16, 0.42, 0.90, 1),
        "user": (0.80, 0.87, 1.0, 1),
        "bot": (1.0, 1.0, 1.0, 1),
        "ok": (0.15, 0.62, 0.33, 1),
        "warn": (0.85, 0.55, 0.05, 1),
        "danger": (0.82, 0.12, 0.12, 1),
        "input": (1.0, 1.0, 1.0, 1),
    },
}

STATE_COLOUR = {
    LinkView.CONNECTED: "ok",
    LinkView.CONNECTING: "warn",
    LinkView.RECONNECTING: "warn",
    LinkView.OFFLINE: "muted",
}
MODULE_COLOUR = {
    "active": "ok",
    "loaded": "ok",
    "loading": "warn",
    "unloading": "warn",
    "failed": "danger",
    "unloaded": "muted",
}
