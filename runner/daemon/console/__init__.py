"""The web console: one page served by the daemon at `/` and `/ui/`.

Modules: `routes` (the HTTP routes and their gate), `session` (token login,
cookie, CSRF), `live` (the sampler behind the server-sent events), `views`
(what each page shows, as JSON), `actions` (replay, purge, offset reset), and
`static/` (the page, its script and its style, shipped in the package).
"""

from __future__ import annotations

from runner.daemon.console.routes import Console, ConsoleMode, install_console

__all__ = ["Console", "ConsoleMode", "install_console"]
