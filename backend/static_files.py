"""WhiteNoise for the static files, without putting every other request through a thread.

`WhiteNoiseMiddleware` is synchronous only. In Django's async handler, a synchronous middleware
makes every request cross into a worker thread for it and back onto the event loop for the async
view behind it: for a small upload about a tenth of the server's CPU went to those hops. This
middleware is async: a request for a static file (under WhiteNoise's prefix, STATIC_URL) is
answered by WhiteNoise in a thread, exactly as before; every other request goes straight on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        # Django hands an async get_response (adapting the chain under a synchronous handler).
        self.get_response = get_response
        # WhiteNoise's own lookup, handed a get_response that answers None: no file of its.
        self.whitenoise = WhiteNoiseMiddleware(_no_static_file)
        self.serve = sync_to_async(self.whitenoise, thread_sensitive=False)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(self.whitenoise.static_prefix):
            response = await self.serve(request)
            if response is not None:
                return response
        return await self.get_response(request)


def _no_static_file(request: Any) -> None:
    return None
