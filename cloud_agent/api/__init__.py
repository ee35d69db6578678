"""The cloud agent's HTTPS JSON API (FastAPI, OpenAPI at ``/openapi.json``): build it with :func:`create_app`.

Modules: :mod:`.app` (the app), :mod:`.auth` (bearer tokens and roles: ``require_role``), :mod:`.errors` (one JSON
error shape, counted), :mod:`.routes` (one router per area), :mod:`.schemas` (typed request and response models),
:mod:`.server` (serving it over HTTPS inside the agent).
"""

from cloud_agent.api.app import create_app

__all__ = ["create_app"]
