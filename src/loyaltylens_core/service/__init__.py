"""``loyaltylens serve``: the online offer service, FastAPI on uvicorn over the same
``Pipeline`` the CLI runs.

Nothing here is imported by ``loyaltylens --help``, ``plugins`` or ``run``: fastapi,
uvicorn and prometheus-client load only when ``serve`` starts (an optional extra,
``pip install 'loyaltylens[serve]'``). ``settings``, ``keys``, ``ratelimit`` and ``audit``
are plain Python; ``app`` and ``server`` need the extra.
"""
