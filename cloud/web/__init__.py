"""The dashboard: static pages under ``/ui/`` that read the REST API with the user's token."""

from cloud.web.pages import router

__all__ = ["router"]
