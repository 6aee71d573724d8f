"""The asyncio shell around sessions, the engine and rooms: glue only.

- ``app``: :class:`CaptionServer`, what it holds, start and stop, and routing to the others.
- ``http``: plain HTTP routes: pages, health, metrics, transcript export, room deletion.
- ``publish``: ``/v1/publish``, a publisher's connection: audio in, session pump, captions out.
- ``view``: ``/v1/captions``, a viewer's connection: ready, backlog, live captions.
- ``connection``: what every handler uses to answer (errors, responses, tokens).

A new WebSocket endpoint (another protocol onto the same sessions and rooms) is a module here
beside ``publish`` with its path in ``app``'s router; a new HTTP endpoint is a line in ``http``.
Decisions live outside this package and know nothing of sockets: access (``streaming.access``),
rooms and sessions' registry (``streaming.rooms``), room settings (``streaming.room_settings``),
captioning (``streaming.session``), decoding (``streaming.engine``).
"""

from streaming.server.app import CaptionServer

__all__ = ["CaptionServer"]
