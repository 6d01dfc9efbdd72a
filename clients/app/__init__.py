"""The Enigma app for phones and desktops: a thin, stateless client of the bus.

``clients.app.viewmodels`` holds the logic (plain asyncio Python over the SDK, tested without a window);
``clients.app.ui`` is the Kivy layer that draws the view models and forwards taps to them. Kivy is imported
only inside ``clients.app.ui`` (``pip install enigma[app]``), so the view models run anywhere the SDK does.
"""
