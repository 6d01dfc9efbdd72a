"""The Kivy layer of the app: it draws the view models and forwards taps to them, nothing more.

Kivy is imported only by the modules of this package, and only when the app starts (``run_app``), because
Kivy reads its window settings at import time.
"""
